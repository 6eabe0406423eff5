"""RewardModel.Reward end to end over gRPC with the tiny model, and the RRM retry with a scripted judge."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import grpc
import pytest

from proctor.engine.errors import ItemError
from proctor.engine.items import BackendInfo, FinishReason, GenerateItem, Generation, Sample
from proctor.engine.rewards.pipeline import RewardScorer, RewardSettings, RolloutInput
from proctor.v1 import reward_pb2, reward_pb2_grpc

pytestmark = pytest.mark.asyncio(loop_scope="session")

GOOD = (
    "<think><PLAN>Find the capital of France.</PLAN></think>"
    '<tool_call>{"name": "search", "query": "capital of France"}</tool_call>'
    "<tool_response>Paris is the capital of France.</tool_response>"
    "<think><OBSERVATION>The result says Paris.</OBSERVATION><VERIFICATION>It matches.</VERIFICATION></think>"
    "<answer>Paris</answer>"
)
NO_ATOMS = "<think>just thinking</think><answer>the city of Paris</answer>"
MALFORMED = "<think>never closed <answer>Paris</answer>"


def _request(id: str, response: str, **kw: object) -> reward_pb2.RewardRequest:
    return reward_pb2.RewardRequest(
        id=id, question="What is the capital of France?", response=response, gold_answers=["Paris"], **kw
    )


async def _reward(target: str, requests: list[reward_pb2.RewardRequest]) -> dict[str, reward_pb2.RewardResult]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = reward_pb2_grpc.RewardModelStub(channel)
        return {r.id: r async for r in stub.Reward(iter(requests))}


async def test_expected_mode_scores_every_atom(target: str) -> None:
    out = await _reward(target, [_request("good", GOOD, training_step=50, mode=reward_pb2.EXPECTED)])
    r = out["good"]
    assert not r.HasField("error"), r.error
    assert r.format_ok and r.r_f1 == 1.0 and r.alpha == pytest.approx(0.25)
    assert [a.type for a in r.atoms] == ["PLAN", "OBSERVATION", "VERIFICATION"]
    assert [a.turn for a in r.atoms] == [0, 1, 1]
    assert all(0.0 <= a.score <= 10.0 for a in r.atoms)
    assert r.r_atom == pytest.approx(sum(a.score for a in r.atoms) / 30, abs=1e-6)
    assert r.reward == pytest.approx(0.25 * r.r_atom + 0.75 * 1.0, abs=1e-6)
    again = await _reward(target, [_request("good", GOOD, training_step=50, mode=reward_pb2.EXPECTED)])
    assert again["good"].reward == r.reward, "expected mode is deterministic"


async def test_rules_malformed_no_atoms_and_bad_items_in_one_stream(target: str) -> None:
    out = await _reward(
        target,
        [
            _request("rules", NO_ATOMS, training_step=0, mode=reward_pb2.RULES),
            _request("rules_malformed", MALFORMED, training_step=0, mode=reward_pb2.RULES),
            _request("malformed", MALFORMED, training_step=10),
            _request("no_atoms", NO_ATOMS, training_step=0),
            _request("late", GOOD, training_step=101),
            _request("tmax", GOOD, training_step=5, total_steps=0),
            reward_pb2.RewardRequest(id="nogold", response=GOOD, training_step=1, mode=reward_pb2.RULES),
            reward_pb2.RewardRequest(id="empty", gold_answers=["Paris"], training_step=1),
            reward_pb2.RewardRequest(id="noquestion", response=GOOD, gold_answers=["", "Paris"], training_step=1),
            _request("mode", GOOD, training_step=1, mode=42),  # type: ignore[arg-type]
        ],
    )
    rules = out["rules"]
    assert (
        not rules.HasField("r_atom") and rules.reward == pytest.approx(rules.r_f1) and rules.r_f1 == pytest.approx(0.4)
    )
    assert out["rules_malformed"].reward == -1.0 and out["rules_malformed"].alpha == 0.0
    malformed = out["malformed"]
    assert malformed.reward == -1.0 and not malformed.format_ok and "think" in malformed.format_reason
    no_atoms = out["no_atoms"]
    assert no_atoms.no_atoms and no_atoms.r_atom == 0.0 and no_atoms.reward == pytest.approx(0.5 * 0.4)
    assert out["late"].error.field == "training_step"
    assert out["tmax"].error.field == "total_steps"
    # Empty golds and an empty response are scored by the rule (paper rules §2.2), not refused.
    assert not out["nogold"].HasField("error") and out["nogold"].reward == 0.0 and out["nogold"].format_ok
    assert not out["empty"].HasField("error") and out["empty"].reward == -1.0 and not out["empty"].format_ok
    assert out["noquestion"].error.field == "question", "the RRM reads the question: its absence is the request's"
    assert out["mode"].error.field == "mode"


async def test_generate_mode_with_a_gibberish_rrm_is_an_error_after_one_retry(target: str) -> None:
    out = await _reward(target, [_request("g", GOOD, training_step=1, mode=reward_pb2.GENERATE)])
    error = out["g"].error
    assert error.code == grpc.StatusCode.INTERNAL.value[0]
    assert "unparseable after 2 attempts" in error.message


class ScriptedJudge:
    """A Generator whose judgements are given in advance (to test the retry policy, not a model)."""

    def __init__(self, replies: list[str]) -> None:
        self.replies = replies
        self.prompts: list[GenerateItem] = []
        self.info = BackendInfo("scripted", "test", "-", "-", "-", 256, 10_000, (0,))

    def tokenize(self, text: str, add_special_tokens: bool) -> list[int]:
        return [ord(c) % 256 for c in text]

    async def generate(self, item: GenerateItem) -> Generation:
        self.prompts.append(item)
        text = self.replies[len(self.prompts) - 1]
        return Generation(item.prompt_ids, [Sample(0, [1], text, FinishReason.STOP, "", 0.0)])


async def test_unparseable_judgement_is_retried_once_then_fails_the_item() -> None:
    item = RolloutInput(question="q", response=GOOD, golds=["paris"], step=0, total_steps=10, mode="generate")
    settings = RewardSettings(total_steps=10)
    judge = ScriptedJudge(["no idea", "Atom 1: 10\nAtom 2: 6\nAtom 3: 8"])
    out = await RewardScorer(settings, judge).score(item)  # type: ignore[arg-type]
    assert out.rrm_attempts == 2 and out.atom_scores == [10, 6, 8] and out.r_atom == pytest.approx(0.8)
    assert judge.prompts[0].params.seed != judge.prompts[1].params.seed, "the retry samples anew"
    with pytest.raises(ItemError, match="unparseable after 2 attempts"):
        await RewardScorer(settings, ScriptedJudge(["junk", "Atom 1: 3"])).score(item)  # type: ignore[arg-type]
    minimum = await RewardScorer(
        replace(settings, aggregation="min"), ScriptedJudge(["Atom 1: 10\nAtom 2: 6\nAtom 3: 8"])
    ).score(item)  # type: ignore[arg-type]
    assert minimum.r_atom == pytest.approx(0.6)
    assert minimum.reward == pytest.approx(0.5 * 0.6 + 0.5 * 1.0)


async def test_rules_only_server_needs_no_model() -> None:
    from proctor.engine.config import Config, RewardConfig, ServerConfig
    from tests.conftest import started

    server = await started(
        Config(
            server=ServerConfig(port=0, metrics_port=-1), reward=RewardConfig(model="", mode="rules", total_steps=10)
        )
    )
    try:
        out = await _reward(f"127.0.0.1:{server.port}", [_request(f"r{i}", GOOD, training_step=i) for i in range(10)])
        assert all(r.reward == 1.0 and r.alpha == 0.0 for r in out.values())
        expected = await _reward(
            f"127.0.0.1:{server.port}", [_request("e", GOOD, training_step=1, mode=reward_pb2.EXPECTED)]
        )
        assert expected["e"].error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    finally:
        await server.drain(grace_s=1)
    await asyncio.sleep(0)


async def test_a_counted_rollout_the_door_cannot_read_still_counts_toward_its_step() -> None:
    """As on the HTTP routes: the trainer sent it, so T moves on whether or not it could be scored."""
    from proctor.engine.config import Config, RewardConfig, ServerConfig
    from tests.conftest import started

    server = await started(
        Config(
            server=ServerConfig(port=0, metrics_port=-1), reward=RewardConfig(model="", mode="rules", total_steps=10)
        )
    )
    target = f"127.0.0.1:{server.port}"

    def counted(id: str, **fields: object) -> reward_pb2.RewardRequest:
        request = _request(id, GOOD, run=reward_pb2.StepRun(key="door-refusals", rollouts_per_step=2))
        for name, value in fields.items():
            setattr(request, name, value)
        return request

    try:
        bad = await _reward(target, [counted("bad", atom_detail=99)])
        assert bad["bad"].error.field == "atom_detail"
        first = await _reward(target, [counted("first")])
        second = await _reward(target, [counted("second")])
    finally:
        await server.drain(grace_s=1)
    # rollouts 1 and 2 are step 0; the refused one was rollout 1, so "second" is rollout 3: step 1
    assert (first["first"].training_step, second["second"].training_step) == (0, 1)


async def test_batched_stream_answers_every_item_as_the_plain_one_does(target: str) -> None:
    from proctor.clients.reward import AsyncRewardClient

    requests = [
        _request(f"r{i}", [GOOD, NO_ATOMS, MALFORMED][i % 3], training_step=i, mode=reward_pb2.RULES)
        for i in range(700)  # more than one reply message can carry at once
    ]
    requests += [_request("bad_step", GOOD, training_step=-1, mode=reward_pb2.RULES), _request("", GOOD)]
    async with AsyncRewardClient(target) as client:
        plain = await client.reward(requests, batch_size=0)
        batched = await client.reward(requests, batch_size=64)
        odd = await client.reward(requests[:5], batch_size=3)  # a last, shorter message
    assert set(batched) == set(plain) == {r.id for r in requests}
    for key, result in plain.items():
        assert _without_timing(batched[key]) == _without_timing(result), key
    assert batched["bad_step"].error.field == "training_step" and batched[""].error.field == "id"
    assert set(odd) == {r.id for r in requests[:5]}


def _without_timing(result: reward_pb2.RewardResult) -> reward_pb2.RewardResult:
    copy = reward_pb2.RewardResult()
    copy.CopyFrom(result)
    copy.ClearField("timing")
    return copy


async def test_atom_detail_trims_the_atoms_of_a_result_and_nothing_else(target: str) -> None:
    detail = {"full": reward_pb2.ATOM_DETAIL_FULL, "no_text": reward_pb2.ATOM_DETAIL_NO_TEXT}
    detail["none"] = reward_pb2.ATOM_DETAIL_NONE
    for mode in (reward_pb2.RULES, reward_pb2.EXPECTED):
        out = await _reward(
            target,
            [_request(k, GOOD, training_step=3, mode=mode, atom_detail=v) for k, v in detail.items()]
            + [_request("bad", GOOD, training_step=3, mode=mode, atom_detail=7)],  # type: ignore[arg-type]
        )
        full, no_text, none = out["full"], out["no_text"], out["none"]
        assert [a.text for a in full.atoms] == ["Find the capital of France.", "The result says Paris.", "It matches."]
        assert [(a.type, a.turn, a.score) for a in no_text.atoms] == [(a.type, a.turn, a.score) for a in full.atoms]
        assert all(a.text == "" for a in no_text.atoms) and len(none.atoms) == 0
        assert full.atom_count == no_text.atom_count == none.atom_count == 3
        for trimmed in (no_text, none):
            assert (trimmed.reward, trimmed.r_f1, trimmed.alpha, trimmed.HasField("r_atom")) == (
                full.reward,
                full.r_f1,
                full.alpha,
                full.HasField("r_atom"),
            )
        assert out["bad"].error.field == "atom_detail"
    assert full.HasField("r_atom") and all(a.HasField("score") for a in full.atoms)  # expected mode, the last
