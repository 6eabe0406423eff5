"""One core, two doors: the same input through gRPC and through HTTP gets the same answer and the same refusal.

Each case below was a drift while each door had its own copy of the service logic: the prompt checks and limits
(the HTTP front tokenized any text before checking its length), where a long rollout's rules run (a many-thread pool
on HTTP, the one rules thread on gRPC), and the RRM's metrics (recorded by the gRPC door only).
"""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest

from proctor.clients import reward_request, score_request
from proctor.engine.cores.context import REWARD
from proctor.engine.rewards.pipeline import PendingJudgement, RewardMode, RolloutInput
from proctor.engine.server.lifecycle import ProctorServer
from proctor.v1 import reward_pb2_grpc, teacher_pb2, teacher_pb2_grpc
from tests.engine.doors.grpc.test_reward_service import GOOD
from tests.engine.doors.http.test_http_openai import base, call

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _after_field(message: str) -> str:
    """A refusal's text after the field it names (the field paths are each wire format's own)."""
    return message.split(": ", 1)[1]


async def _score(target: str, request: teacher_pb2.ScoreRequest) -> teacher_pb2.ScoreResult:
    async with grpc.aio.insecure_channel(target) as channel:
        (result,) = [r async for r in teacher_pb2_grpc.TeacherStub(channel).Score(iter([request]))]
        return result


async def test_a_token_outside_the_vocabulary_is_refused_alike(tiny_server: ProctorServer, target: str) -> None:
    vocab = tiny_server.cores.teacher.info.vocab_size  # type: ignore[union-attr]
    grpc_result = await _score(target, score_request("a", [1, vocab], [2]))
    status, body, _ = await asyncio.to_thread(
        call, base(tiny_server) + "/v1/completions", {"prompt": [1, vocab], "max_tokens": 1}
    )
    assert grpc_result.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert (
        grpc_result.error.message
        == f"context.token_ids.ids[1]: token id {vocab} is outside the vocabulary [0, {vocab})"
    )
    assert status == 400 and body["error"]["param"] == "prompt[1]"
    assert _after_field(body["error"]["message"]) == _after_field(grpc_result.error.message)


async def test_a_text_too_long_for_the_prompt_limit_is_refused_alike_before_tokenizing(
    tiny_server: ProctorServer, target: str
) -> None:
    core = tiny_server.cores.teacher
    assert core is not None
    text = "word " * (core.max_prompt_tokens * 64 // 5 + 1)
    calls: list[str] = []
    tokenize = core.backend.tokenize
    core.backend.tokenize = lambda *a: calls.append("tokenized") or tokenize(*a)  # type: ignore[method-assign]
    try:
        grpc_result = await _score(target, score_request("a", text, "x"))
        status, body, _ = await asyncio.to_thread(
            call, base(tiny_server) + "/v1/completions", {"prompt": text, "max_tokens": 1}
        )
    finally:
        del core.backend.tokenize  # type: ignore[method-assign]
    assert calls == []  # refused on its length alone, through either door
    message = grpc_result.error.message
    assert "cannot fit max_prompt_tokens" in message and message.startswith("context.text: ")
    assert status == 400 and body["error"]["param"] == "prompt"
    assert _after_field(body["error"]["message"]) == _after_field(message)


async def test_prompt_logprobs_over_http_are_grpc_scores(tiny_server: ProctorServer, target: str) -> None:
    ids = [5, 17, 99, 3, 250, 41, 7]
    scored = await _score(target, score_request("a", ids[:1], ids[1:], top_logprobs=2))
    status, body, _ = await asyncio.to_thread(
        call, base(tiny_server) + "/v1/completions", {"prompt": ids, "max_tokens": 0, "prompt_logprobs": 2}
    )
    assert status == 200, body
    positions = body["choices"][0]["prompt_logprobs"]
    assert positions[0] is None
    http = [positions[p][str(ids[p])]["logprob"] for p in range(1, len(ids))]
    assert http == pytest.approx(list(scored.logprobs), abs=1e-6)


async def test_a_long_rollout_is_ruled_on_the_one_rules_thread_through_both_doors(
    tiny_server: ProctorServer, target: str
) -> None:
    core = tiny_server.cores.reward
    assert core is not None
    long_response = GOOD + " padding" * 4000  # past the inline limit: ruled off the event loop
    threads: list[str] = []
    apply_rules = core.scorer.apply_rules

    def recording(item: object) -> object:
        threads.append(threading.current_thread().name)
        return apply_rules(item)  # type: ignore[arg-type]

    core.scorer.apply_rules = recording  # type: ignore[method-assign,assignment]
    try:
        request = reward_request("a", "q", long_response, ["Paris"], 10)
        async with grpc.aio.insecure_channel(target) as channel:
            (grpc_result,) = [r async for r in reward_pb2_grpc.RewardModelStub(channel).Reward(iter([request]))]
        body = {"query": ["q" + long_response], "prompts": ["q"], "labels": ["Paris"], "training_step": 10}
        status, http, _ = await asyncio.to_thread(call, base(tiny_server) + "/reward", body)
    finally:
        del core.scorer.apply_rules  # type: ignore[method-assign]
    assert status == 200, http
    assert [t.split("_")[0] for t in threads] == ["proctor-rules", "proctor-rules"]
    assert http["rewards"] == [pytest.approx(grpc_result.reward)]


async def test_the_rrm_is_recorded_once_whichever_door(tiny_server: ProctorServer, target: str) -> None:
    """One expected-mode rollout through either door adds the judge's own prompt tokens once, and one observation
    to the queue and inference histograms (the HTTP door recorded none of it before the cores)."""
    core = tiny_server.cores.reward
    assert core is not None
    registry = tiny_server.metrics.registry
    labels = {"service": REWARD, "rpc": "Reward"}

    def recorded() -> tuple[float, float, float]:
        def get(name: str, extra: dict[str, str] | None = None) -> float:
            return registry.get_sample_value(name, {**labels, **(extra or {})}) or 0.0

        return (
            get("proctor_tokens_total", {"kind": "prompt"}),
            get("proctor_queue_seconds_count"),
            get("proctor_inference_seconds_count"),
        )

    question = "What is the capital?"
    item = RolloutInput(question, GOOD, ["Paris"], 10, None, RewardMode.EXPECTED)
    pending = core.scorer.apply_rules(item)
    assert isinstance(pending, PendingJudgement)
    judge_tokens = (await core.scorer.judge_atoms(pending)).prompt_tokens  # the scorer alone records nothing
    assert judge_tokens > 0

    before = recorded()
    request = reward_request("a", question, GOOD, ["Paris"], 10, mode="expected")
    async with grpc.aio.insecure_channel(target) as channel:
        [r async for r in reward_pb2_grpc.RewardModelStub(channel).Reward(iter([request]))]
    after_grpc = recorded()
    body = {"query": [question + GOOD], "prompts": [question], "labels": ["Paris"]}
    status, out, _ = await asyncio.to_thread(call, base(tiny_server) + "/reward?training_step=10", body)
    assert status == 200, out
    after_http = recorded()
    assert [a - b for a, b in zip(after_grpc, before, strict=True)] == [judge_tokens, 1, 1]
    assert [a - b for a, b in zip(after_http, after_grpc, strict=True)] == [judge_tokens, 1, 1]


async def test_a_request_of_many_short_texts_is_tokenized_off_the_loop(tiny_server: ProctorServer) -> None:
    """The inline budget is the request's: 3 texts of 2,000 characters are tokenized on a worker thread, together."""
    core = tiny_server.cores.teacher
    assert core is not None
    threads: list[str] = []
    tokenize = core.backend.tokenize

    def recording(text: str, add_special_tokens: bool) -> list[int]:
        threads.append(threading.current_thread().name)
        return tokenize(text, add_special_tokens)

    core.backend.tokenize = recording  # type: ignore[method-assign]
    try:
        body = {"prompt": ["word " * 400] * 3, "max_tokens": 1}
        status, out, _ = await asyncio.to_thread(call, base(tiny_server) + "/v1/completions", body)
        short = {"prompt": "a few words", "max_tokens": 1}
        status_short, _, _ = await asyncio.to_thread(call, base(tiny_server) + "/v1/completions", short)
    finally:
        del core.backend.tokenize  # type: ignore[method-assign]
    assert status == 200 and status_short == 200, out
    assert len(threads) == 4 and len(set(threads[:3])) == 1 and threads[0] != threading.main_thread().name
    assert threads[3] == threading.main_thread().name  # a short request is tokenized inline: no thread hop


async def test_a_long_item_refused_for_capacity_leaves_no_work_behind() -> None:
    """Deferred work (a long text's tokenizing) is created only when the item is admitted: refused items leave no
    coroutine that is never awaited."""
    import gc
    import warnings

    from proctor.clients.teacher import AsyncTeacherClient
    from proctor.engine.config import ServiceLimits
    from tests.conftest import started, tiny_config

    server = await started(tiny_config(limits=ServiceLimits(max_queued_items=1)))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            async with AsyncTeacherClient(f"127.0.0.1:{server.port}") as client:
                results = await client.score(
                    [score_request(f"s{i}", "word " * 1000, " x") for i in range(6)], batch_size=6
                )
            gc.collect()
    finally:
        await server.drain(grace_s=1)
    codes = {r.error.code for r in results.values()}
    assert grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] in codes  # some were refused for capacity
    assert not [w for w in caught if "never awaited" in str(w.message)]
