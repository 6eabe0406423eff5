"""The Teacher over a real localhost socket, with the tiny built-in model."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Callable

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from proctor.clients.teacher import AsyncTeacherClient, generate_request, score_request
from proctor.engine.backends.builtin_models import resolve_model
from proctor.engine.config import ServiceLimits
from proctor.engine.server.lifecycle import ProctorServer
from proctor.v1 import teacher_pb2
from tests.conftest import TINY, started, tiny_config

pytestmark = pytest.mark.asyncio(loop_scope="session")

INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]


async def test_health_per_service(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "proctor.v1.Teacher", "proctor.v1.Critic", "proctor.v1.RewardModel"):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Check(health_pb2.HealthCheckRequest(service="proctor.v1.Nope"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_the_services(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        reply = await call.read()
        services = {s.name for s in reply.list_services_response.service}
    assert {
        "proctor.v1.Teacher",
        "proctor.v1.Critic",
        "proctor.v1.RewardModel",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services


async def test_info(target: str) -> None:
    async with AsyncTeacherClient(target) as client:
        info = await client.info()
    assert info.backend == "torch" and info.vocab_size > 0 and info.max_model_len == 2048


async def test_generate_n_samples_seed_stop_and_logprobs(target: str) -> None:
    params = dict(n=4, seed=123, temperature=1.0, max_tokens=12, top_logprobs=3, ignore_eos=True)
    async with AsyncTeacherClient(target) as client:
        first = await client.generate([generate_request("a", "PersonX goes to the store", **params)])
        again = await client.generate([generate_request("a", "PersonX goes to the store", **params)])
        other = await client.generate([generate_request("a", "PersonX goes to the store", **{**params, "seed": 124})])
    result = first["a"]
    assert not result.HasField("error"), result.error
    assert [c.index for c in result.completions] == [0, 1, 2, 3]
    tokens = [list(c.token_ids) for c in result.completions]
    assert tokens == [list(c.token_ids) for c in again["a"].completions], "same seed, same tokens"
    assert tokens != [list(c.token_ids) for c in other["a"].completions]
    assert len({tuple(t) for t in tokens}) > 1, "the n samples differ"
    for c in result.completions:
        assert len(c.token_ids) == len(c.logprobs) == 12
        assert c.finish_reason == teacher_pb2.LENGTH
        assert c.top.k == 3 and len(c.top.token_ids) == 36
        assert c.cumulative_logprob == pytest.approx(sum(c.logprobs), abs=1e-3)
        # the sampled token's log-prob never exceeds the best alternative's
        assert all(lp <= top + 1e-5 for lp, top in zip(c.logprobs, c.top.logprobs[::3], strict=True))


async def test_stop_strings_end_the_text_before_the_stop(target: str) -> None:
    async with AsyncTeacherClient(target) as client:
        free = await client.generate([generate_request("f", "Hello", n=1, seed=5, max_tokens=40, ignore_eos=True)])
        text = free["f"].completions[0].text
        stop = text[len(text) // 2 : len(text) // 2 + 2]
        assert stop.strip(), "test needs a visible stop string"
        stopped = await client.generate(
            [generate_request("s", "Hello", n=1, seed=5, max_tokens=40, ignore_eos=True, stop=[stop])]
        )
    c = stopped["s"].completions[0]
    assert c.finish_reason == teacher_pb2.STOP and c.stop_reason == stop
    assert c.text == text[: text.index(stop)]
    assert list(c.token_ids) == list(free["f"].completions[0].token_ids[: len(c.token_ids)])


async def test_greedy_equals_transformers_generate(target: str) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_model(TINY), dtype=torch.float32)
    async with AsyncTeacherClient(target) as client:
        prompts = {"short": [5, 6, 7], "long": [9, 10, 11, 12, 13, 14, 15]}  # different lengths: left padding
        results = await client.generate(
            [generate_request(k, ids, temperature=0.0, max_tokens=6, ignore_eos=True) for k, ids in prompts.items()]
        )
    for key, ids in prompts.items():
        expected = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, min_new_tokens=6)
        assert list(results[key].completions[0].token_ids) == expected[0, len(ids) :].tolist(), key


async def test_score_equals_a_float64_reference(target: str, reference: Callable[[list[int]], torch.Tensor]) -> None:
    gen = torch.Generator().manual_seed(0)
    cases = {
        f"s{i}": (
            torch.randint(0, 500, (c,), generator=gen).tolist(),
            torch.randint(0, 500, (t,), generator=gen).tolist(),
        )
        for i, (c, t) in enumerate([(1, 1), (5, 9), (17, 3), (40, 40)])
    }
    async with AsyncTeacherClient(target) as client:
        results = await client.score([score_request(k, c, t, top_logprobs=4) for k, (c, t) in cases.items()])
    for key, (context, tgt) in cases.items():
        r = results[key]
        assert not r.HasField("error"), r.error
        ref = reference(context + tgt)[len(context) - 1 : len(context) + len(tgt) - 1]
        expected = ref.gather(1, torch.tensor(tgt).unsqueeze(1)).squeeze(1)
        assert torch.allclose(torch.tensor(list(r.logprobs), dtype=torch.float64), expected, atol=1e-4), key
        top_vals = torch.tensor(list(r.top.logprobs), dtype=torch.float64).view(len(tgt), 4)
        assert torch.allclose(top_vals, ref.topk(4, dim=-1).values, atol=1e-4)


async def test_score_batched_answers_each_item_as_score_does(target: str) -> None:
    """Many items per message (ScoreBatched), one per message (Score): the same results, a bad item failing alone."""
    requests = [score_request(f"s{i}", [3, 7 + i], [11, 13, 17 + i], top_logprobs=3) for i in range(5)]
    requests.insert(2, score_request("bad", [1, 10**6], [2]))
    async with AsyncTeacherClient(target) as client:
        one_by_one = await client.score(requests, batch_size=0)
        batched = await client.score(requests, batch_size=2)
    assert batched.keys() == one_by_one.keys() == {r.id for r in requests}
    assert batched["bad"].error.code == INVALID_ARGUMENT and batched["bad"].error.field == "context.token_ids.ids[1]"
    for key, result in one_by_one.items():
        assert batched[key].error == result.error
        assert list(batched[key].logprobs) == pytest.approx(list(result.logprobs), abs=1e-6), key
        assert list(batched[key].top.token_ids) == list(result.top.token_ids), key


async def test_a_malformed_item_fails_only_itself(target: str) -> None:
    bad = {
        "top_p": (generate_request("top_p", "Hi", top_p=1.5), "params.top_p"),
        "n": (generate_request("n", "Hi", n=1000), "params.n"),
        "temperature": (generate_request("temperature", "Hi", temperature=float("nan")), "params.temperature"),
        "token": (generate_request("token", [1, 2, 10**6]), "prompt.token_ids.ids[2]"),
        "prompt": (teacher_pb2.GenerateRequest(id="prompt"), "prompt"),
        "long": (generate_request("long", [1] * 2040, max_tokens=100), "params.max_tokens"),
        "stop_id": (generate_request("stop_id", "Hi", stop_token_ids=[-1]), "params.stop_token_ids[0]"),
    }
    good = [generate_request(f"ok{i}", "Hello there", max_tokens=3) for i in range(3)]
    async with AsyncTeacherClient(target) as client:
        results = await client.generate([good[0], *(r for r, _ in bad.values()), *good[1:]])
    for key, (_, field) in bad.items():
        assert results[key].error.code == INVALID_ARGUMENT, key
        assert results[key].error.field == field, key
        assert field in results[key].error.message
    for g in good:
        assert not results[g.id].HasField("error") and len(results[g.id].completions[0].token_ids) == 3


async def test_score_rejects_over_long_input_instead_of_truncating(target: str) -> None:
    async with AsyncTeacherClient(target) as client:
        results = await client.score([score_request("x", [1] * 2000, [2] * 100), score_request("y", [1], [2])])
    assert results["x"].error.code == INVALID_ARGUMENT and "nothing is truncated" in results["x"].error.message
    assert len(results["y"].logprobs) == 1


async def test_duplicate_ids_in_flight_are_rejected(target: str) -> None:
    async with AsyncTeacherClient(target) as client:
        answers = [
            r
            async for r in client.generate_stream(
                [generate_request("same", "Hi", max_tokens=30, ignore_eos=True), generate_request("same", "Hi")]
            )
        ]
    assert sorted(a.HasField("error") for a in answers) == [False, True]


async def test_per_item_deadline(target: str) -> None:
    async with AsyncTeacherClient(target) as client:
        results = await client.generate(
            [
                generate_request("slow", "Hi", max_tokens=2000, ignore_eos=True, timeout_ms=50),
                generate_request("fast", "Hi", max_tokens=2),
            ]
        )
    assert results["slow"].error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert results["slow"].error.field == "timeout_ms"
    assert not results["fast"].HasField("error")


async def test_call_deadline_cancels_the_work(tiny_server: ProctorServer, target: str) -> None:
    async with AsyncTeacherClient(target, timeout_s=0.3) as client:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in client.generate_stream([generate_request("long", "Hi", max_tokens=2000, ignore_eos=True)]):
                pass
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # the cancelled item leaves the backend: nothing stays queued or admitted
    for _ in range(100):
        if tiny_server.lifecycle and _admitted(tiny_server) == 0:
            break
        await asyncio.sleep(0.05)
    assert _admitted(tiny_server) == 0


def _admitted(server: ProctorServer) -> float:
    return server.metrics.inflight_items.labels("proctor.v1.Teacher")._value.get()  # type: ignore[no-any-return]


async def test_metrics_endpoint(tiny_server: ProctorServer, target: str) -> None:
    async with AsyncTeacherClient(target) as client:
        await client.generate([generate_request("m", "Hi", max_tokens=2)])
    url = f"http://127.0.0.1:{tiny_server.metrics_port}/metrics"
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    for name in (
        'proctor_items_total{code="OK",rpc="Generate",service="proctor.v1.Teacher"}',
        'proctor_requests_total{code="OK",rpc="Generate",service="proctor.v1.Teacher"}',
        "proctor_queue_seconds_bucket",
        "proctor_inference_seconds_bucket",
        "proctor_batch_size_items_bucket",
        "proctor_batch_tokens_bucket",
        "proctor_batch_padding_ratio_bucket",
        'proctor_queue_depth_items{service="proctor.v1.Teacher"}',
        'proctor_serving{service="proctor.v1.Teacher"} 1.0',
    ):
        assert name in text, name


async def test_past_the_admission_limit_items_get_resource_exhausted() -> None:
    server = await started(tiny_config(limits=ServiceLimits(max_queued_items=2, stream_window=64)))
    try:
        async with AsyncTeacherClient(f"127.0.0.1:{server.port}") as client:
            results = await client.generate(
                [generate_request(f"i{i}", "Hi", max_tokens=200, ignore_eos=True) for i in range(8)]
            )
    finally:
        await server.drain(grace_s=1)
    codes = [r.error.code for r in results.values()]
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]) >= 1
    assert codes.count(0) >= 2, "admitted items still complete"
