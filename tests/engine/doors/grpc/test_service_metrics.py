"""Every service reports queue depth, queue time and tokens on /metrics (issue 17 item 4)."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proctor.clients.reward import AsyncRewardClient, reward_request
from proctor.engine.server.lifecycle import ProctorServer
from tests.engine.doors.grpc.test_reward_service import GOOD

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _samples(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_the_reward_service_reports_queue_depth_queue_time_and_tokens(
    tiny_server: ProctorServer, target: str
) -> None:
    async with AsyncRewardClient(target) as client:
        out = await client.reward([reward_request("m", "Capital of France?", GOOD, "Paris", 10, mode="expected")])
    assert not out["m"].HasField("error")
    samples = await asyncio.to_thread(_samples, tiny_server.metrics_port)
    reward = {("service", "proctor.v1.RewardModel"), ("rpc", "Reward")}
    assert samples[("proctor_queue_seconds_count", frozenset(reward))] >= 1
    assert samples[("proctor_tokens_total", frozenset(reward | {("kind", "prompt")}))] > 0
    assert samples[("proctor_tokens_total", frozenset(reward | {("kind", "scored")}))] > 0
    for service in ("proctor.v1.RewardModel", "proctor.v1.Teacher", "proctor.v1.Critic"):
        assert ("proctor_queue_depth_items", frozenset({("service", service)})) in samples, service


async def test_generate_triples_is_recorded_like_every_stream(tiny_server: ProctorServer, target: str) -> None:
    """GenerateTriples used to bypass the stream metrics (no requests counter, no item seconds) and the token counts."""
    import grpc

    from proctor.v1 import common_pb2, teacher_pb2, teacher_pb2_grpc

    request = teacher_pb2.TriplesRequest(
        events=["PersonX goes to the store"],
        relations=[common_pb2.X_WANT],
        seed=3,
        skip_critic=True,
        inference_params=teacher_pb2.SamplingParams(n=2, max_tokens=4, ignore_eos=True),
    )
    triples = {("service", "proctor.v1.Teacher"), ("rpc", "GenerateTriples")}
    generated = ("proctor_tokens_total", frozenset(triples | {("kind", "generated")}))
    prompt = ("proctor_tokens_total", frozenset(triples | {("kind", "prompt")}))
    before = await asyncio.to_thread(_samples, tiny_server.metrics_port)
    async with grpc.aio.insecure_channel(target) as channel:
        found = [r async for r in teacher_pb2_grpc.TeacherStub(channel).GenerateTriples(request)]
    samples = await asyncio.to_thread(_samples, tiny_server.metrics_port)
    # its samples' tokens too: one relation prompt, n=2 samples of exactly 4 tokens (ignore_eos)
    assert samples[generated] - before.get(generated, 0.0) == 2 * 4
    assert samples[prompt] - before.get(prompt, 0.0) > 0
    assert samples[("proctor_requests_total", frozenset(triples | {("code", "OK")}))] >= 1
    assert samples[("proctor_item_seconds_count", frozenset(triples))] >= len(found) >= 1
    assert samples[("proctor_inflight_items", frozenset({("service", "proctor.v1.Teacher")}))] == 0


async def test_the_critic_counts_the_tokens_of_the_pairs_it_classified(tiny_server: ProctorServer, target: str) -> None:
    """Classify counts the tokens the classifier read: a pair as given, a triple's every name draw."""
    import grpc
    from transformers import AutoTokenizer

    from proctor.engine.backends.builtin_models import resolve_model
    from proctor.engine.skd.critic_input import triple_pairs
    from proctor.v1 import common_pb2, critic_pb2, critic_pb2_grpc

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("builtin:tiny-critic"))
    assert tiny_server.config.critic is not None
    draws = tiny_server.config.critic.draws
    expected = len(tokenizer("PersonX pays the bill", "to be generous")["input_ids"])
    expected += sum(
        len(tokenizer(p.first, p.second)["input_ids"])
        for p in triple_pairs("PersonX goes home", "xWant", "to sleep", 7, draws)
    )
    requests = [
        critic_pb2.ClassifyRequest(
            id="p", pair=critic_pb2.TextPair(first="PersonX pays the bill", second="to be generous")
        ),
        critic_pb2.ClassifyRequest(
            id="t",
            triple=critic_pb2.Triple(head="PersonX goes home", relation=common_pb2.X_WANT, tail="to sleep"),
            seed=7,
        ),
    ]
    key = (
        "proctor_tokens_total",
        frozenset({("service", "proctor.v1.Critic"), ("rpc", "Classify"), ("kind", "prompt")}),
    )
    before = (await asyncio.to_thread(_samples, tiny_server.metrics_port)).get(key, 0.0)
    async with grpc.aio.insecure_channel(target) as channel:
        found = [r async for r in critic_pb2_grpc.CriticStub(channel).Classify(iter(requests))]
    assert [r.HasField("error") for r in found] == [False, False]
    after = (await asyncio.to_thread(_samples, tiny_server.metrics_port))[key]
    assert after - before == expected
