"""Hostile input and hard faults against a real server: nothing may freeze it, grow without bound, or lose the
innocent items of a call (issue 22). bench/hostile.py drives the same cases at scale and measures them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from proctor.engine.config import Config, RewardConfig, ServerConfig
from proctor.engine.server.grpc_server import ProctorServer
from proctor.proto.proctor.v1 import reward_pb2, reward_pb2_grpc

from .conftest import started

pytestmark = pytest.mark.asyncio(loop_scope="session")


def rules_config(**server: object) -> Config:
    """A rules-only RewardModel: no model to load, so each test starts its own server in milliseconds."""
    return Config(
        server=ServerConfig(port=0, metrics_port=0, drain_grace_s=5, **server),  # type: ignore[arg-type]
        reward=RewardConfig(model="", mode="rules", total_steps=100),
    )


@pytest_asyncio.fixture(loop_scope="session")
async def rules_server() -> AsyncIterator[ProctorServer]:
    server = await started(rules_config())
    yield server
    await server.drain(grace_s=1)


def rollout_request(item_id: str, response: str) -> reward_pb2.RewardRequest:
    return reward_pb2.RewardRequest(id=item_id, response=response, gold_answers=["paris"], training_step=1)


async def health_latencies(target: str, stop: asyncio.Event) -> list[float]:
    """Health.Check round trips, one every 10 ms until `stop`."""
    seen: list[float] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while not stop.is_set():
            started = time.perf_counter()
            await stub.Check(health_pb2.HealthCheckRequest())
            seen.append(time.perf_counter() - started)
            await asyncio.sleep(0.01)
    return seen


async def test_a_long_tag_soup_rollout_does_not_block_health(rules_server: ProctorServer) -> None:
    """Rule rewards of a long rollout run off the event loop: Health answers while ~1 s of parsing goes on."""
    target = f"127.0.0.1:{rules_server.port}"
    # The case, grown: a policy stuck repeating one tag (60 kB of it blocked Health for 22 s).
    soup = "<think>" + "<A>" * 1_000_000 + "</think><answer>paris</answer>"  # 3 MB
    stop = asyncio.Event()
    probing = asyncio.create_task(health_latencies(target, stop))
    await asyncio.sleep(0.05)
    async with grpc.aio.insecure_channel(target, options=[("grpc.max_send_message_length", 8 << 20)]) as channel:
        started = time.perf_counter()
        results = [
            r async for r in reward_pb2_grpc.RewardModelStub(channel).Reward(iter([rollout_request("soup", soup)]))
        ]
        took = time.perf_counter() - started
    stop.set()
    latencies = await probing
    assert results[0].atom_count == 0 and results[0].reward == 1.0
    assert took > 0.3, "the case must be long enough to show a blocked loop"
    assert max(latencies) < min(0.25, took / 2), (max(latencies), took)


@pytest.mark.timeout(120)
async def test_the_async_client_reports_a_killed_server_as_unavailable(tmp_path: Path) -> None:
    """grpc.aio turns a send that fails on a dead call into INTERNAL ("non-retryable"); the sync client says
    UNAVAILABLE. Every proctor client must say UNAVAILABLE for the items a SIGKILLed server never answered."""
    from proctor.clients.reward import AsyncRewardClient, reward_request

    from .test_process import ServerProcess

    config = "server: {port: 0, metrics_port: -1}\nreward: {model: '', mode: rules, total_steps: 1000}\n"
    codes: set[int] = set()
    for attempt in range(3):  # the kill must land while the client is still writing
        server = ServerProcess(tmp_path, config, f"kill{attempt}.yaml")
        slow = "<think>" + "<A>x</A>" * 2500 + "</think><answer>paris</answer>"  # 20 kB: rules off the loop
        requests = [reward_request(f"r{i}", "q?", slow, "paris", 1) for i in range(3000)]
        try:
            async with AsyncRewardClient(server.target) as client:
                call = asyncio.create_task(client.reward(requests))
                await asyncio.sleep(1.0)
                server.proc.kill()
                results = await call
        finally:
            server.proc.kill()
            server.proc.wait()
        unanswered = [r for r in results.values() if r.HasField("error")]
        assert unanswered, "the kill must come before the last answer"
        codes |= {r.error.code for r in unanswered}
    assert codes == {grpc.StatusCode.UNAVAILABLE.value[0]}, codes
