"""Batch formation: score buckets by similar length (oldest first), the dynamic batcher's bounds."""

from __future__ import annotations

import asyncio
import time
from dataclasses import astuple

import pytest
import torch

from proctor.engine.backends.torch.batch_policy import Job, Queues, ScoreJob, ScoreSampleJob
from proctor.engine.backends.torch.batching import DynamicBatcher
from proctor.engine.backends.torch.generator import TorchGenerator
from proctor.engine.items import SamplingParams, ScoreItem, ScoreSampleItem

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_score_bucket_takes_the_oldest_and_its_nearest_lengths() -> None:
    policy = TorchGenerator("builtin:tiny", max_score_tokens=100).policy
    loop = asyncio.get_running_loop()
    jobs: list[ScoreJob] = [
        Job(item=ScoreItem([1] * (n - 1), [2]), future=loop.create_future(), loop=loop) for n in (10, 50, 12, 48, 11, 9)
    ]
    batch = policy.score_bucket(jobs)
    assert [len(j.item.context_ids) + 1 for j in batch] == [10, 11, 9, 12]  # 4 x 12 <= 100; adding 48 would not fit


async def test_scores_that_sample_wait_apart_and_bucket_by_the_same_rule() -> None:
    policy = TorchGenerator("builtin:tiny", max_score_tokens=100).policy
    loop = asyncio.get_running_loop()
    one = SamplingParams(max_tokens=1)
    sampling: list[ScoreSampleJob] = [
        Job(item=ScoreSampleItem([1] * (n - 1), [2], params=one), future=loop.create_future(), loop=loop)
        for n in (10, 50, 12, 48, 11, 9, 10)
    ]
    sampling[-1].cancelled = True
    plain: ScoreJob = Job(item=ScoreItem([1] * 60, [2]), future=loop.create_future(), loop=loop)
    queues = Queues()
    queues.score_samples.extend(sampling)
    queues.score.append(plain)
    taken = policy.take(queues)
    assert [len(j.item.prompt_ids) for j in taken.score_samples] == [10, 11, 9, 12]
    assert taken.scores == [plain] and taken.wave == []
    assert [len(j.item.prompt_ids) for j in queues.score_samples] == [50, 48]  # in order; the cancelled one dropped
    assert len(queues) == 2 and len(taken.jobs()) == 5


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
        assert all(len(b) <= 3 and (len(b) * max(b) <= 10 or len(b) == 1) for b in seen), "padded slots"
        assert all(b == sorted(b) for b in seen), "length-sorted inside a batch"
        seen.clear()
        await batcher.submit([1])  # alone: goes after max_wait
        assert seen == [[1]] and time.perf_counter() - t0 >= 0.05
    finally:
        await batcher.close()


async def test_dynamic_batcher_cuts_what_waits_into_batches_of_similar_length() -> None:
    """Arrival order mixes short and long; the batches do not: padding is only the spread inside a batch."""
    seen: list[list[int]] = []
    slots: list[tuple[int, int, int]] = []

    def run(batch: list[int]) -> list[int]:
        seen.append(batch)
        return batch

    batcher: DynamicBatcher[int, int] = DynamicBatcher(
        run, lambda x: x, max_items=4, max_tokens=200, max_wait_s=0.05, on_batch=lambda *a: slots.append(a)
    )
    batcher.start()
    try:
        sizes = [5, 40, 6, 38, 7, 41, 5, 39]
        assert [r[0] for r in await batcher.submit(sizes)] == sizes  # results in submission order
        assert seen == [[5, 5, 6, 7], [38, 39, 40, 41]]
        assert slots == [(4, 23, 28), (4, 158, 164)]
        seen.clear()
        await batcher.submit([60, 60, 60, 60])  # 4 x 60 > 200 padded slots: three, then one
        assert seen == [[60, 60, 60], [60]]
    finally:
        await batcher.close()


async def test_dynamic_batcher_drops_cancelled_requests_and_fails_only_the_failed_batch() -> None:
    seen: list[list[int]] = []

    def run(batch: list[int]) -> list[int]:
        seen.append(batch)
        if 13 in batch:
            raise RuntimeError("the model failed")
        return [x + 1 for x in batch]

    batcher: DynamicBatcher[int, int] = DynamicBatcher(run, lambda x: 1, max_items=2, max_tokens=100, max_wait_s=0.05)
    batcher.start()
    try:
        doomed = asyncio.create_task(batcher.submit([7, 8, 9]))
        await asyncio.sleep(0)  # queued, its first batch not yet closed (max_wait)
        doomed.cancel()
        kept = await batcher.submit([1, 2, 3])
        assert [r[0] for r in kept] == [2, 3, 4]
        assert all(r[1] >= 0 and r[2] >= 0 for r in kept)
        assert not any(x in batch for batch in seen for x in (7, 8, 9)), "a cancelled request never runs"
        with pytest.raises(RuntimeError, match="the model failed"):
            await batcher.submit([13])
        assert [r[0] for r in await batcher.submit([20])] == [21], "the batcher keeps serving"
    finally:
        await batcher.close()


async def test_classifier_batches_score_every_pair_as_it_scores_alone() -> None:
    """Pairs tokenized in one call and padded by hand into mixed-length batches get the probabilities of the model
    run on each pair alone (the tokenizer's own encoding, no padding); a pair over the limit fails on its field."""
    from proctor.engine.backends.torch.classifier import TorchClassifier
    from proctor.engine.errors import ItemError
    from proctor.engine.items import TextPair

    critic = TorchClassifier("builtin:tiny-critic", device="cpu", max_batch_items=8, max_batch_tokens=256)
    await critic.start()
    pairs = [TextPair("PersonX goes " + "far " * (i % 7), f"as a result, PersonX wants {i}") for i in range(30)]

    def alone(pair: TextPair) -> float:
        with torch.inference_mode():
            return float(critic._model(**critic._tokenizer(pair.first, pair.second, return_tensors="pt")).logits[0, 0])

    with torch.no_grad():  # a random tiny model's P(valid) hardly moves between inputs: make differences show
        critic._model.classifier.weight.mul_(1e4)
        critic._model.classifier.bias.sub_(alone(pairs[0]))
    try:
        probs, queue_s, inference_s, tokens = astuple(await critic.classify(pairs, "pairs"))
        assert queue_s >= 0 and inference_s > 0
        assert tokens == sum(len(critic._tokenizer(p.first, p.second)["input_ids"]) for p in pairs)
        for pair, prob in zip(pairs, probs, strict=True):
            assert prob == pytest.approx(float(torch.sigmoid(torch.tensor(alone(pair)))), abs=1e-4)
        assert max(probs) - min(probs) > 0.03
        with pytest.raises(ItemError) as failed:
            await critic.classify([pairs[0], TextPair("word " * 600, "x")], "triple")
        assert failed.value.field == "triple" and "over the critic's limit" in failed.value.message
    finally:
        await critic.close()


async def test_packed_score_batches_equal_padded_ones_without_padding() -> None:
    """score_packing: packed puts a batch's sequences in one row (positions restarting, no mask: transformers
    reads the boundaries off the position ids); the log-probs and top-k equal the padded batches'."""
    gen = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return list(torch.randint(3, 400, (n,), generator=gen).tolist())

    items = [ScoreItem(ids(c), ids(t), 3) for c, t in [(1, 1), (30, 5), (7, 60), (2, 2), (45, 45)]]
    seen: dict[str, list[tuple[int, int, int]]] = {"packed": [], "padded": []}
    outputs = {}
    for packing in ("packed", "padded"):
        engine = TorchGenerator(
            "builtin:tiny", device="cpu", score_packing=packing, on_batch=lambda rpc, *a, p=packing: seen[p].append(a)
        )
        await engine.start()
        try:
            outputs[packing] = await engine._submit(engine._queues.score, items)  # one batch: queued at once
        finally:
            await engine.close()
    tokens = sum(len(i.context_ids) + len(i.target_ids) for i in items)
    assert seen["packed"] == [(5, tokens, tokens)], "one batch, no padding slot"
    assert all(slots >= real for _, real, slots in seen["padded"]) and seen["padded"] != seen["packed"]
    for packed, padded in zip(outputs["packed"], outputs["padded"], strict=True):
        assert torch.allclose(torch.tensor(packed.logprobs), torch.tensor(padded.logprobs), atol=1e-4)
        assert packed.top is not None and padded.top is not None and packed.top.ids == padded.top.ids


async def test_packing_and_attention_settings_are_checked() -> None:
    from proctor.engine.config import ConfigError, TeacherConfig, load_config

    with pytest.raises(ConfigError, match=r"teacher\.score_packing: 'tight'"):
        TeacherConfig(score_packing="tight")
    with pytest.raises(ConfigError, match=r"reward\.attn_implementation: 'xformers'"):
        load_config(None, {"reward": {"attn_implementation": "xformers"}})
    assert TorchGenerator("builtin:tiny", attn_implementation="flex_attention")._packed, "auto packs on varlen"
    assert not TorchGenerator("builtin:tiny")._packed, "auto pads with sdpa (a dense mask over a packed row)"
