"""Overload: ten times the capacity at once; every item gets a result or RESOURCE_EXHAUSTED, nothing hangs."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from proctor.clients.teacher import AsyncTeacherClient, generate_request
from proctor.engine.config import ServiceLimits
from tests.conftest import started, tiny_config

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


async def test_the_stream_window_bounds_the_items_in_flight_and_inline_items_take_no_slot() -> None:
    """With a window of 3 the server has at most 3 backend items of a call in flight (it stops reading); items its
    handler answers at once pass through without waiting, whatever the window holds."""
    from proctor.engine.cores.context import Admission, Lifecycle, ServiceContext
    from proctor.engine.cores.metrics import Metrics
    from proctor.engine.doors.grpc.streams import StreamSpec, run_stream
    from proctor.v1 import reward_pb2

    running, peak = 0, 0

    async def backend(req: reward_pb2.RewardRequest) -> reward_pb2.RewardResult:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return reward_pb2.RewardResult(id=req.id)

    def handle(req: reward_pb2.RewardRequest) -> object:
        return reward_pb2.RewardResult(id=req.id, reward=1.0) if req.id.startswith("now") else backend(req)

    async def requests():  # type: ignore[no-untyped-def]
        for i in range(30):
            yield reward_pb2.RewardRequest(id=f"{'now' if i % 3 == 0 else 'later'}{i}")

    svc = ServiceContext("test", Metrics(), Lifecycle(), Admission(100), stream_window=3)
    spec = StreamSpec("Reward", handle, reward_pb2.RewardResult)  # type: ignore[arg-type]
    results = [reward_pb2.RewardResult.FromString(m) async for m in run_stream(svc, spec, requests())]
    assert sorted(r.id for r in results) == sorted(f"{'now' if i % 3 == 0 else 'later'}{i}" for i in range(30))
    assert not any(r.HasField("error") for r in results)
    assert peak == 3, "the window filled, and never overflowed"
    assert all(r.reward == 1.0 for r in results if r.id.startswith("now"))
    assert svc.admission.used == 0
