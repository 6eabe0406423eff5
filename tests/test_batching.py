"""Batch formation: score buckets by similar length (oldest first), the dynamic batcher's bounds."""

from __future__ import annotations

import asyncio
import time

import pytest

from proctor.engine.backends.torch_generator import TorchGenerator, _Job
from proctor.engine.batching import DynamicBatcher
from proctor.engine.types import ScoreItem

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_score_bucket_takes_the_oldest_and_its_nearest_lengths() -> None:
    engine = TorchGenerator("builtin:tiny", max_score_tokens=100)
    loop = asyncio.get_running_loop()
    jobs = [
        _Job(item=ScoreItem([1] * (n - 1), [2]), future=loop.create_future(), loop=loop)
        for n in (10, 50, 12, 48, 11, 9)
    ]
    batch = engine._score_bucket(jobs)
    assert [len(j.item.context_ids) + 1 for j in batch] == [10, 11, 9, 12]  # 4 x 12 <= 100; adding 48 would not fit


async def test_dynamic_batcher_bounds_items_tokens_and_wait() -> None:
    seen: list[list[int]] = []

    def run(batch: list[int]) -> list[int]:
        seen.append(batch)
        return [x * 2 for x in batch]

    batcher: DynamicBatcher[int, int] = DynamicBatcher(run, lambda x: x, max_items=3, max_tokens=10, max_wait_s=0.05)
    batcher.start()
    try:
        t0 = time.perf_counter()
        results = await batcher.submit([5, 1, 2, 3, 4, 1])
        assert [r[0] for r in results] == [10, 2, 4, 6, 8, 2]
        assert all(len(b) <= 3 and (sum(b) <= 10 or len(b) == 1) for b in seen)
        assert all(b == sorted(b) for b in seen), "length-sorted inside a batch"
        seen.clear()
        await batcher.submit([1])  # alone: goes after max_wait
        assert seen == [[1]] and time.perf_counter() - t0 >= 0.05
    finally:
        await batcher.close()
