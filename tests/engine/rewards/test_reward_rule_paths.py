"""Every path to a rules-mode reward gives the rule's number (paper rules §2.2), empty golds and responses included.

The reference below is DeepResearcher's rule written from paper rules §2.2's text, step by step, not from proctor's
functions; the server (Reward and RewardBatched), the TRL / verl adapters and the OpenRLHF endpoint must all give
what it gives, and so must proctor's own rule functions.
"""

from __future__ import annotations

import asyncio
import random
import re
import string
import struct

import pytest
from transformers import TrainerState

from proctor.clients import verl
from proctor.clients.reward import AsyncRewardClient, reward_request
from proctor.clients.trl import ProctorReward
from proctor.engine.rewards import outcome, rollout
from proctor.engine.server.lifecycle import ProctorServer
from tests.clients.test_adapters import _post

pytestmark = pytest.mark.asyncio(loop_scope="session")


def reference_reward(response: str, golds: list[str]) -> float:
    """paper rules §2.2, in its order: lowercase; format (counts, then the left-to-right scan); the first answer;
    normalise; token-set F1, best over the golds (split on <|answer_split|>); no tokens -> 0; malformed -> -1."""
    text = response.lower()
    for tag in ("tool_call", "think", "answer"):
        opening, closing = f"<{tag}>", f"</{tag}>"
        if text.count(opening) != text.count(closing):
            return -1.0
        position = 0
        while (start := text.find(opening, position)) != -1:
            end = text.find(closing, start + len(opening))
            if end == -1:
                return -1.0
            position = end + len(closing)
    found = re.search(r"<answer>(.*?)</answer>", text, re.DOTALL)
    if found is None:
        return -1.0

    def normalise(s: str) -> list[str]:
        for c in string.punctuation:
            s = s.replace(c, " ")
        s = re.sub(r"\s+", " ", s).strip()
        return s.split(" ") if s else []

    prediction = set(normalise(found.group(1).strip()))
    best = 0.0
    for joined in golds:
        for gold in joined.lower().split("<|answer_split|>"):
            reference = set(normalise(gold))
            common = len(prediction & reference)
            if prediction and reference and common:
                p, r = common / len(prediction), common / len(reference)
                best = max(best, 2 * p * r / (p + r))
    return best


def rule_functions(response: str, golds: list[str]) -> float:
    verdict = rollout.check_format(response)
    return outcome.best_f1(verdict.answer, golds) if verdict.ok else -1.0


def as_float32(x: float) -> float:
    return float(struct.unpack("f", struct.pack("f", x))[0])


_WORDS = ["paris", "Paris", "new", "york", "NYC", "the", "big", "apple", "a", "don't", "U.S.", "1,000"]
_SOUP = ["<think>", "</think>", "<Think>", "</THINK>", "<answer>", "</answer>", "<ANSWER>", "</Answer>"]
_SOUP += ["<tool_call>", "</tool_call>", "<PLAN>", "</PLAN>", " ", "\n", "!", "“", "—", "x", "<", ">"]


def random_rollout(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.1:
        return ""
    if kind < 0.1 + 0.5:  # well formed, with an answer worth scoring
        answer = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(0, 4)))
        return f"<think><PLAN>go</PLAN></think><answer>{rng.choice(['', ' ', '...'])}{answer}</answer>"
    return "".join(rng.choice(_SOUP + _WORDS) for _ in range(rng.randint(0, 25)))


def random_golds(rng: random.Random) -> list[str]:
    choices: list[list[str]] = [[], [""], ["   "], ["..."], ["<|answer_split|>"], [""] * 2]
    if rng.random() < 0.4:
        return rng.choice(choices)
    golds = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(0, 3))) for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.3:
        golds = ["<|answer_split|>".join(golds)]
    return golds + rng.choice(choices)


def _cases(seed: int, count: int) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    return [(random_rollout(rng), random_golds(rng)) for _ in range(count)]


async def test_rule_functions_equal_the_reference_on_random_rollouts() -> None:
    for response, golds in _cases(0, 20_000):
        assert rule_functions(response, golds) == pytest.approx(reference_reward(response, golds)), (response, golds)


async def test_server_rules_mode_equals_the_rule_on_random_rollouts(target: str) -> None:
    """RewardBatched and Reward, rules mode, golds exactly as given (empty ones included), at several steps."""
    cases = _cases(1, 600)
    assert sum(not golds or not any(g.strip() for g in golds) for _, golds in cases) >= 50
    assert sum(response == "" for response, _ in cases) >= 30
    requests = [
        reward_request(f"r{i}", "", response, golds, i % 100, total_steps=100, mode="rules", atoms="none")
        for i, (response, golds) in enumerate(cases)
    ]
    async with AsyncRewardClient(target) as client:
        batched = await client.reward(requests, batch_size=64)
        plain = await client.reward(requests, batch_size=0)
    for i, (response, golds) in enumerate(cases):
        for results in (batched, plain):
            result = results[f"r{i}"]
            assert not result.HasField("error"), (response, golds, result.error)
            want = rule_functions(response, golds)
            assert result.reward == as_float32(want) == as_float32(reference_reward(response, golds))
            assert result.format_ok is (want != -1.0) and result.alpha == 0.0


EMPTY_CASES = [  # (completion, gold) -> the rule's reward
    ("<think>t</think><answer>Paris</answer>", "", 0.0),
    ("<think>t</think><answer>Paris</answer>", [], 0.0),
    ("<think>t</think><answer>Paris</answer>", None, 0.0),
    ("", "Paris", -1.0),
    ("<think>t</think><answer></answer>", "Paris", 0.0),
    ("<think>t</think><answer>Paris</answer>", ["", "paris"], 1.0),
]


async def test_trl_adapter_scores_empty_golds_and_responses(target: str) -> None:
    state = TrainerState(global_step=3, max_steps=10)
    reward = ProctorReward(target, mode="rules")
    completions = [c for c, _, _ in EMPTY_CASES]
    golds = [g for _, g, _ in EMPTY_CASES]
    prompts = ["Where?"] * len(EMPTY_CASES)
    out = await asyncio.to_thread(lambda: reward(prompts, completions, answer=golds, trainer_state=state))
    assert out == [want for _, _, want in EMPTY_CASES]


async def test_verl_adapter_scores_empty_golds_and_responses(target: str) -> None:
    # verl's own data layouts: a plain string, a list, {"target": [...]} (Search-R1 / DeepResearcher)
    truths = ["", [], {"target": []}, "Paris", {"target": [""]}, {"target": ["", "Paris"]}]
    wants = [0.0, 0.0, 0.0, -1.0, 0.0, 1.0]
    extra = {"question": "Where?", "training_step": 10, "total_steps": 10}  # alpha 0: the reward is R_f1
    completions = [c for c, _, _ in EMPTY_CASES]
    batch = await asyncio.to_thread(
        verl.compute_score_batch, ["nq"] * 6, completions, truths, [extra] * 6, target=target
    )
    assert [b["score"] for b in batch] == wants
    one = await verl.compute_score_async("nq", "", "", extra, target=target)
    assert one["score"] == -1.0 and one["format_ok"] == 0.0
    none = await verl.compute_score_async("nq", completions[0], None, extra, target=target)
    assert none["score"] == 0.0 and none["format_ok"] == 1.0


async def test_openrlhf_endpoint_scores_empty_labels_and_responses(tiny_server: ProctorServer) -> None:
    assert tiny_server.http is not None
    url = f"http://127.0.0.1:{tiny_server.http.port}/reward?training_step=100"  # T = T_MAX: alpha 0
    prompt = "Where?"
    completions = ["<think>t</think><answer>Paris</answer>", "", "<think>t</think><answer>Paris</answer>"]
    body = {"query": [prompt + c for c in completions], "prompts": [prompt] * 3, "labels": ["", "Paris", "paris"]}
    status, out = await asyncio.to_thread(_post, url, body)
    assert status == 200, out
    assert out["rewards"] == [0.0, -1.0, 1.0]
