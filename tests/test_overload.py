"""Overload: ten times the capacity at once; every item gets a result or RESOURCE_EXHAUSTED, nothing hangs."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from proctor.clients.teacher import AsyncTeacherClient, generate_request
from proctor.engine.config import ServiceLimits

from .conftest import started, tiny_config

pytestmark = pytest.mark.asyncio(loop_scope="session")
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


async def test_ten_times_capacity() -> None:
    server = await started(tiny_config(limits=ServiceLimits(max_queued_items=16, stream_window=32)))
    try:
        target = f"127.0.0.1:{server.port}"

        async def one_stream(s: int) -> dict:  # type: ignore[type-arg]
            async with AsyncTeacherClient(target, timeout_s=120) as client:
                return await client.generate(
                    [generate_request(f"{s}-{i}", "Hi", max_tokens=4, ignore_eos=True) for i in range(16)]
                )

        streams = await asyncio.gather(*(one_stream(s) for s in range(10)))  # 160 items, capacity 16
        codes = [r.error.code if r.HasField("error") else 0 for results in streams for r in results.values()]
        assert len(codes) == 160 and set(codes) <= {0, EXHAUSTED}
        assert codes.count(EXHAUSTED) > 0 and codes.count(0) >= 16
        assert server.metrics.inflight_items.labels("proctor.v1.Teacher")._value.get() == 0
        # after the storm the server serves normally
        async with AsyncTeacherClient(target) as client:
            after = await client.generate([generate_request("after", "Hi", max_tokens=2)])
        assert not after["after"].HasField("error")
    finally:
        await server.drain(grace_s=1)


async def test_items_past_the_per_stream_limit() -> None:
    server = await started(tiny_config(limits=ServiceLimits(max_items_per_stream=3)))
    try:
        async with AsyncTeacherClient(f"127.0.0.1:{server.port}") as client:
            results = await client.generate([generate_request(f"i{i}", "Hi", max_tokens=1) for i in range(5)])
    finally:
        await server.drain(grace_s=1)
    assert [results[f"i{i}"].error.code for i in range(5)] == [0, 0, 0, EXHAUSTED, EXHAUSTED]
    assert "open a new stream" in results["i4"].error.message
