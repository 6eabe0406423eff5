"""Exactly one result per id across replicas: SIGKILL one of two servers mid-stream, restart it."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from proctor.clients.replicas import REWARD, ClientMetrics, ReplicaClient, RetryPolicy
from proctor.clients.reward import reward_request
from proctor.engine.config import Config, RewardConfig, ServerConfig
from tests.conftest import started
from tests.engine.doors.grpc.test_reward_service import GOOD, MALFORMED, NO_ATOMS
from tests.engine.server.test_process import ServerProcess

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(port: int) -> str:
    return (
        f"server: {{port: {port}, metrics_port: -1, drain_grace_s: 5}}\n"
        "reward: {model: '', mode: rules, total_steps: 1000, limits: {max_queued_items: 64, stream_window: 16}}\n"
    )


def _requests(n: int) -> list:  # type: ignore[type-arg]
    texts = [GOOD, MALFORMED, NO_ATOMS]
    return [reward_request(f"r{i}", "Capital of France?", texts[i % 3], "Paris", i % 1000) for i in range(n)]


@pytest.mark.timeout(300)
async def test_sigkill_and_restart_of_a_replica_loses_and_doubles_nothing(tmp_path: Path) -> None:
    ports = [_free_port(), _free_port()]
    servers = [ServerProcess(tmp_path, _config(p), f"r{i}.yaml") for i, p in enumerate(ports)]
    targets = [f"127.0.0.1:{p}" for p in ports]
    try:
        reference = ReplicaClient([targets[1]], REWARD)
        expected = await reference.run(_requests(3000))
        await reference.close()

        registry = CollectorRegistry()
        client = ReplicaClient(
            targets, REWARD, RetryPolicy(backoff_s=0.05, item_timeout_s=30), seed=0, metrics=ClientMetrics(registry)
        )
        run = asyncio.create_task(client.run(_requests(3000)))
        await asyncio.sleep(0.3)
        servers[0].proc.kill()  # SIGKILL mid-stream
        await asyncio.to_thread(servers[0].proc.wait)
        killed_at = time.perf_counter()
        servers[0] = await asyncio.to_thread(ServerProcess, tmp_path, _config(ports[0]), "r0.yaml")
        results = await run
        await client.close()
    finally:
        for server in servers:
            server.proc.kill()
            server.proc.wait()
    assert client.stats.replica_failures[targets[0]] >= 1 and client.stats.resent > 0, client.stats
    assert registry.get_sample_value("proctor_client_items_total", {"rpc": "Reward", "outcome": "ok"}) == 3000
    assert registry.get_sample_value("proctor_client_resent_items_total", {"rpc": "Reward"}) == client.stats.resent
    assert list(results) == list(expected), "exactly one result per id, in the order sent"
    errors = [r for r in results.values() if r.HasField("error")]
    assert not errors, errors[:3]
    for item_id, result in results.items():
        assert result.reward == expected[item_id].reward and result.r_f1 == expected[item_id].r_f1, item_id
    assert time.perf_counter() - killed_at < 120


async def test_items_get_a_final_error_only_when_no_replica_comes_back_within_the_deadline() -> None:
    client = ReplicaClient(
        [f"127.0.0.1:{_free_port()}"], REWARD, RetryPolicy(max_attempts=3, backoff_s=0.01, deadline_s=1.0)
    )
    started = time.perf_counter()
    results = await client.run(_requests(5))
    await client.close()
    assert time.perf_counter() - started < 3.0
    assert len(results) == 5
    for result in results.values():
        assert result.error.code == 14 and "gave up after 0 tries (the call's deadline of 1.0s passed)" in (
            result.error.message
        )
        assert "no replica reports SERVING" in result.error.message


def _rules_server(port: int, **server: object) -> Config:
    return Config(
        server=ServerConfig(port=port, metrics_port=-1, **server),  # type: ignore[arg-type]
        reward=RewardConfig(model="", mode="rules", total_steps=1000),
    )


async def test_an_outage_of_every_replica_costs_no_attempt_and_no_budget() -> None:
    """Both replicas down when the call starts, back 4 s later: with one attempt per item,
    every item still succeeds, since rounds with no replica SERVING send nothing (they used to spend every
    item's attempts in under 4 s)."""
    ports = [_free_port(), _free_port()]
    client = ReplicaClient([f"127.0.0.1:{p}" for p in ports], REWARD, RetryPolicy(max_attempts=1, deadline_s=60))
    run = asyncio.create_task(client.run(_requests(2000)))
    await asyncio.sleep(4)
    servers = [await started(_rules_server(p)) for p in ports]
    try:
        results = await run
    finally:
        await client.close()
        for server in servers:
            await server.drain(grace_s=1)
    assert len(results) == 2000
    assert not [r for r in results.values() if r.HasField("error")]
    assert client.stats.resent == 0 and client.stats.rounds > 1


async def test_a_refused_call_ends_at_once_with_the_servers_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong token is not a replica failure: the item ends UNAUTHENTICATED at once, not at the deadline."""
    monkeypatch.setenv("PROCTOR_TEST_TOKENS", "right")
    server = await started(_rules_server(0, auth_tokens_env="PROCTOR_TEST_TOKENS"))
    client = ReplicaClient([f"127.0.0.1:{server.port}"], REWARD, RetryPolicy(deadline_s=30))
    try:
        began = time.perf_counter()
        results = await client.run(_requests(1))
    finally:
        await client.close()
        await server.drain(grace_s=1)
    assert time.perf_counter() - began < 10
    assert results["r0"].error.code == 16, results


async def test_deterministic_work_is_the_same_on_every_replica() -> None:
    """Score, expected-mode rewards and seeded sampling give the same answer on two independent servers."""
    from proctor.clients.replicas import GENERATE, SCORE
    from proctor.clients.teacher import generate_request, score_request
    from proctor.v1 import reward_pb2
    from tests.conftest import tiny_config

    servers = [await started(tiny_config()) for _ in range(2)]
    try:
        answers = []
        for server in servers:
            target = [f"127.0.0.1:{server.port}"]
            score = ReplicaClient(target, SCORE)
            generate = ReplicaClient(target, GENERATE)
            reward = ReplicaClient(target, REWARD)
            answers.append(
                (
                    await score.run([score_request("s", [5, 6, 7], [8, 9, 10], top_logprobs=2)]),
                    await generate.run([generate_request("g", "Hello", n=3, seed=11, max_tokens=8, logprobs=True)]),
                    await reward.run([reward_request("r", "q?", GOOD, "Paris", 10, mode="expected")]),
                )
            )
            for client in (score, generate, reward):
                await client.close()
        first, second = answers
        assert first[0]["s"].logprobs == second[0]["s"].logprobs
        assert [list(c.token_ids) for c in first[1]["g"].completions] == [
            list(c.token_ids) for c in second[1]["g"].completions
        ]
        r1, r2 = first[2]["r"], second[2]["r"]
        assert isinstance(r1, reward_pb2.RewardResult) and not r1.HasField("error")
        assert r1.reward == r2.reward and [a.score for a in r1.atoms] == [a.score for a in r2.atoms]
    finally:
        for server in servers:
            await server.drain(grace_s=1)


async def test_dns_entries_resolve_off_the_loop_and_a_name_that_does_not_says_so() -> None:
    server = await started(_rules_server(0))
    policy = RetryPolicy(max_attempts=1, backoff_s=0.01, deadline_s=1.0)
    client = ReplicaClient([f"dns:localhost:{server.port}", "dns:no-such-replica.invalid:50051"], REWARD, policy)
    lost = ReplicaClient(["dns:no-such-replica.invalid:50051"], REWARD, policy)
    try:
        results = await client.run(_requests(3))
        gone = await lost.run(_requests(1))
    finally:
        await client.close()
        await lost.close()
        await server.drain(grace_s=1)
    assert not [r for r in results.values() if r.HasField("error")], results
    message = gone["r0"].error.message
    assert "no replica reports SERVING; dns:no-such-replica.invalid:50051 did not resolve" in message, message
