"""The replica client's limits: a request over the channel's send limit fails alone, before anything is sent; a
replica that dies charges a try only to the items it had been sent and had not answered (at most `window`)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from proctor.clients.replicas import REWARD, ReplicaClient, RetryPolicy
from proctor.clients.reward import reward_request
from proctor.engine.config import Config, RewardConfig, ServerConfig
from tests.conftest import started
from tests.engine.server.test_process import ServerProcess

pytestmark = pytest.mark.asyncio(loop_scope="session")
MiB = 1024 * 1024


def _server(port: int = 0, max_message_bytes: int = 64 * MiB) -> Config:
    return Config(
        server=ServerConfig(port=port, metrics_port=-1, max_message_bytes=max_message_bytes),
        reward=RewardConfig(model="", mode="rules", total_steps=1000, max_rollout_chars=2 * MiB),
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _requests(n: int) -> list:  # type: ignore[type-arg]
    return [reward_request(f"r{i}", "q", "<answer>paris</answer>", "Paris", 1) for i in range(n)]


async def test_one_request_over_the_send_limit_fails_alone() -> None:
    server = await started(_server(max_message_bytes=MiB))
    client = ReplicaClient([f"127.0.0.1:{server.port}"], REWARD, RetryPolicy(deadline_s=60), max_message_bytes=MiB)
    requests = _requests(2000)
    requests.insert(1000, reward_request("big", "q", "<answer>" + "x" * 1_100_000 + "</answer>", "x", 1))
    try:
        results = await client.run(requests)
    finally:
        await client.close()
        await server.drain(grace_s=1)
    failed = {i: r.error for i, r in results.items() if r.HasField("error")}
    assert list(failed) == ["big"], list(failed)[:5]
    assert failed["big"].code == 3  # INVALID_ARGUMENT: no retry can help
    assert f"over the channel's send limit max_message_bytes {MiB}" in failed["big"].message
    assert client.stats.resent == 0 and client.stats.replica_failures.total() == 0


@pytest.mark.timeout(300)
async def test_a_replica_killed_mid_stream_charges_at_most_window_items(tmp_path: Path) -> None:
    """3,000 items over two replicas, one SIGKILLed mid-stream: only the items it had been sent and had not
    answered are charged a try, at most `window` per broken stream, and every item succeeds."""
    ports = [_free_port(), _free_port()]
    config = "server: {{port: {}, metrics_port: -1}}\nreward: {{model: '', mode: rules, total_steps: 1000}}\n"
    servers = [ServerProcess(tmp_path, config.format(p), f"r{i}.yaml") for i, p in enumerate(ports)]
    client = ReplicaClient([f"127.0.0.1:{p}" for p in ports], REWARD, RetryPolicy(max_attempts=2), seed=0, window=16)
    try:
        run = asyncio.create_task(client.run(_requests(3000)))
        await asyncio.sleep(0.3)
        servers[0].proc.kill()
        results = await run
    finally:
        await client.close()
        for server in servers:
            server.proc.kill()
            server.proc.wait()
    failures = client.stats.replica_failures.total()
    assert failures >= 1
    assert 0 < client.stats.resent <= 16 * failures, client.stats
    assert len(results) == 3000 and not [r for r in results.values() if r.HasField("error")]


async def test_a_request_over_the_replicas_lower_limit_fails_alone() -> None:
    """The channel sends up to 64 MiB, the replica takes 1 MiB: the 1.1 MB request breaks its stream once (gRPC
    lets the server answer nothing else), the replica's RESOURCE_EXHAUSTED names its limit, and from then on that
    request fails alone; the items the broken stream held are resent and succeed."""
    server = await started(_server(max_message_bytes=MiB))
    # The default tries: when grpc.aio loses the broken stream's status to the send in flight (grpc/grpc#36066), the
    # client cannot read the limit and learns it a round later, its neighbours resent once more each time (seen: 1 to
    # 3 breaks in a loaded test run). The big request still fails alone, with the limit named.
    client = ReplicaClient([f"127.0.0.1:{server.port}"], REWARD, RetryPolicy(deadline_s=60))
    requests = _requests(2000)
    requests.insert(1000, reward_request("big", "q", "<answer>" + "x" * 1_100_000 + "</answer>", "x", 1))
    try:
        results = await client.run(requests)
    finally:
        await client.close()
        await server.drain(grace_s=1)
    failed = {i: r.error for i, r in results.items() if r.HasField("error")}
    assert list(failed) == ["big"], list(failed)[:5]
    assert failed["big"].code == 3
    assert f"over the replica's receive limit (max_message_bytes) {MiB}" in failed["big"].message
    assert client.stats.replica_failures.total() >= 1  # more when a status was lost (above)
