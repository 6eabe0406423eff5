"""Fuzzing every request message: no crash, no hang, one answer per id, every INVALID_ARGUMENT names its field."""

from __future__ import annotations

import asyncio
import math

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proctor.v1 import (
    common_pb2,
    critic_pb2,
    critic_pb2_grpc,
    reward_pb2,
    reward_pb2_grpc,
    teacher_pb2,
    teacher_pb2_grpc,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]
text = st.one_of(st.text(max_size=40), st.text(min_size=5000, max_size=20000), st.just(""))
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
u32 = st.integers(0, 2**32 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
token_ids = st.lists(st.one_of(st.integers(0, 600), i32), max_size=30)
prompt = st.one_of(
    st.builds(common_pb2.Prompt, text=text),
    st.builds(lambda ids: common_pb2.Prompt(token_ids=common_pb2.TokenIds(ids=ids)), token_ids),
    st.just(common_pb2.Prompt()),
)
max_tokens = st.one_of(st.integers(0, 8), st.integers(2049, 2**32 - 1))  # small enough to finish, or rejected
sampling = st.builds(
    teacher_pb2.SamplingParams,
    n=st.one_of(st.integers(0, 4), u32),
    temperature=floats,
    top_p=floats,
    top_k=i32,
    presence_penalty=floats,
    frequency_penalty=floats,
    seed=st.integers(0, 2**64 - 1),
    max_tokens=max_tokens,
    stop=st.lists(text, max_size=3),
    stop_token_ids=st.lists(i32, max_size=3),
    logprobs=st.booleans(),
    top_logprobs=st.one_of(st.integers(0, 5), u32),
    ignore_eos=st.booleans(),
    skip_detokenize=st.booleans(),
)
ids = st.one_of(st.text(max_size=8), st.just(""))


def _check(requests: list, results: list) -> None:  # type: ignore[type-arg]
    sent = [r.id for r in requests]
    assert sorted(r.id for r in results) == sorted(sent), "one answer per item (also for empty and duplicate ids)"
    for r in results:
        if r.HasField("error"):
            assert r.error.message
            if r.error.code == INVALID:
                assert r.error.field, r.error


async def _stream(target: str, stub_type, rpc: str, requests: list) -> list:  # type: ignore[no-untyped-def,type-arg]
    async with grpc.aio.insecure_channel(target) as channel:
        call = getattr(stub_type(channel), rpc)(iter(requests), timeout=60)
        return [r async for r in call]


def _run(target: str, stub_type, rpc: str, requests: list) -> list:  # type: ignore[no-untyped-def,type-arg]
    # the server lives in the session loop on another thread of control: drive the client from a fresh loop
    return asyncio.run(_stream(target, stub_type, rpc, requests))


FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def target_thread(tiny_server_thread: str) -> str:
    return tiny_server_thread


@FUZZ
@given(st.lists(st.builds(teacher_pb2.GenerateRequest, id=ids, prompt=prompt, params=sampling), max_size=4))
def test_generate(target_thread: str, requests: list) -> None:  # type: ignore[type-arg]
    _check(requests, _run(target_thread, teacher_pb2_grpc.TeacherStub, "Generate", requests))


@FUZZ
@given(
    st.lists(
        st.builds(
            teacher_pb2.ScoreRequest,
            id=ids,
            context=prompt,
            target=prompt,
            top_logprobs=st.one_of(st.integers(0, 5), u32),
            continuations=st.lists(prompt, max_size=3),
        ),
        max_size=4,
    )
)
def test_score(target_thread: str, requests: list) -> None:  # type: ignore[type-arg]
    _check(requests, _run(target_thread, teacher_pb2_grpc.TeacherStub, "Score", requests))


triple = st.builds(critic_pb2.Triple, head=text, relation=i32, tail=text)
pair = st.builds(critic_pb2.TextPair, first=text, second=text)


@FUZZ
@given(
    st.lists(
        st.one_of(
            st.builds(critic_pb2.ClassifyRequest, id=ids, triple=triple, cutoff=floats, seed=st.integers(0, 2**64 - 1)),
            st.builds(critic_pb2.ClassifyRequest, id=ids, pair=pair),
            st.builds(critic_pb2.ClassifyRequest, id=ids),
        ),
        max_size=4,
    )
)
def test_classify(target_thread: str, requests: list) -> None:  # type: ignore[type-arg]
    _check(requests, _run(target_thread, critic_pb2_grpc.CriticStub, "Classify", requests))


@FUZZ
@given(
    st.lists(
        st.builds(
            reward_pb2.RewardRequest,
            id=ids,
            question=text,
            response=st.one_of(text, st.just("<think><PLAN>x</PLAN></think><answer>a</answer>")),
            gold_answers=st.lists(text, max_size=3),
            training_step=st.integers(-(2**63), 2**63 - 1),
            total_steps=st.integers(-(2**63), 2**63 - 1),
            mode=st.sampled_from([0, 1, 2, 3, 7, -1]),
        ),
        max_size=4,
    )
)
def test_reward(target_thread: str, requests: list) -> None:  # type: ignore[type-arg]
    _check(requests, _run(target_thread, reward_pb2_grpc.RewardModelStub, "Reward", requests))


def test_empty_streams_and_malformed_bytes_on_the_wire(target_thread: str) -> None:
    assert _run(target_thread, teacher_pb2_grpc.TeacherStub, "Generate", []) == []

    async def raw() -> list[teacher_pb2.GenerateResult]:
        async with grpc.aio.insecure_channel(target_thread) as channel:
            method = channel.stream_stream(
                "/proctor.v1.Teacher/Generate",
                request_serializer=lambda b: b,
                response_deserializer=teacher_pb2.GenerateResult.FromString,
            )
            good = teacher_pb2.GenerateRequest(
                id="good", prompt=common_pb2.Prompt(text="Hi"), params=teacher_pb2.SamplingParams(max_tokens=2)
            ).SerializeToString()
            call = method(iter([b"\xff\xfe\x00garbage", good, b"\x0a\xff\xff\xff\xff\x0f"]), timeout=10)
            return [r async for r in call]  # a corrupt message is an item error, not the end of the call

    results = asyncio.run(raw())
    bad = [r for r in results if r.id == ""]
    assert len(results) == 3 and len(bad) == 2
    assert all(r.error.code == 3 and "not a valid proctor.v1.GenerateRequest" in r.error.message for r in bad)
    assert not next(r for r in results if r.id == "good").HasField("error")
    # and the server still answers
    ok = _run(target_thread, teacher_pb2_grpc.TeacherStub, "Generate", [teacher_pb2.GenerateRequest(
        id="after", prompt=common_pb2.Prompt(text="Hi"), params=teacher_pb2.SamplingParams(max_tokens=2))])  # fmt: skip
    assert not ok[0].HasField("error")
    assert math.isfinite(ok[0].timing.total_ms)
