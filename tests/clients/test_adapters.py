"""Trainer adapters end to end against a running server (the tiny model; rules mode where the RRM is not the point).

The trainers' own packages drive these adapters in tests/trainers/ (CI's trainers venv); here, in the main
environment, the adapters' functions are called directly: TRL's `reward_func(prompts=, completions=,
completion_ids=, trainer_state=, log_metric=, **dataset_columns)` with a real `transformers.TrainerState`, verl's
`compute_score(data_source, solution_str, ground_truth, extra_info, **reward_kwargs)` in its three forms, and
OpenRLHF's remote RM POST body.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest
from transformers import TrainerState

from proctor.clients import verl
from proctor.clients.streaming import ItemFailed
from proctor.clients.trl import AsyncProctorReward, ProctorReward
from proctor.engine.cores.reward import RewardCore
from proctor.engine.doors.http import openrlhf
from proctor.engine.rewards.pipeline import RewardScorer, RewardSettings
from proctor.engine.server.lifecycle import ProctorServer
from tests.engine.doors.grpc.test_reward_service import GOOD, MALFORMED, NO_ATOMS

pytestmark = pytest.mark.asyncio(loop_scope="session")

PROMPTS = ["What is the capital of France?"] * 3
COMPLETIONS = [GOOD, MALFORMED, NO_ATOMS]


async def test_trl_reward_function_sync_and_async(target: str) -> None:
    state = TrainerState(global_step=99, max_steps=100)  # the last step: T = T_MAX = 99, alpha = 0, reward = R_f1
    logged: dict[str, float] = {}
    kwargs = {"answer": ["Paris"] * 3, "completion_ids": [[1], [2], [3]], "trainer_state": state}
    reward = ProctorReward(target, gold_column="answer")
    rewards = await asyncio.to_thread(
        lambda: reward(prompts=PROMPTS, completions=COMPLETIONS, log_metric=logged.__setitem__, **kwargs)
    )
    assert rewards == pytest.approx([1.0, -1.0, 0.4])
    assert logged == pytest.approx(
        {"proctor/alpha": 0.0, "proctor/r_f1": 1.4 / 3, "proctor/format_ok": 2 / 3, "proctor/training_step": 99}
    )
    conversational = [[{"role": "assistant", "content": c}] for c in COMPLETIONS]
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS]
    async_reward = AsyncProctorReward(target, gold_column="answer")
    assert await async_reward(prompts=prompts, completions=conversational, **kwargs) == pytest.approx(rewards)
    assert reward.__name__ == "proctor_reward"


async def test_trl_reward_function_surfaces_item_errors(target: str) -> None:
    late = TrainerState(global_step=100, max_steps=100)  # past the last step's T (99)
    reward = ProctorReward(target)
    with pytest.raises(ItemFailed, match="training_step"):
        await asyncio.to_thread(lambda: reward(PROMPTS, COMPLETIONS, answer=["Paris"] * 3, trainer_state=late))
    lenient = ProctorReward(target, on_error="none")
    out = await asyncio.to_thread(lambda: lenient(PROMPTS, COMPLETIONS, answer=["Paris"] * 3, trainer_state=late))
    assert out == [None, None, None]


async def test_verl_compute_score_async_sync_and_batch(target: str) -> None:
    extra = {"question": PROMPTS[0], "training_step": 100, "total_steps": 100}
    one = await verl.compute_score_async("nq", GOOD, {"target": ["Paris"]}, extra, target=target)
    assert one["score"] == 1.0 and one["r_f1"] == 1.0 and one["alpha"] == 0.0 and one["training_step"] == 100
    same = await asyncio.to_thread(verl.compute_score, "nq", GOOD, {"target": ["Paris"]}, extra, target=target)
    assert same == one
    batch = await asyncio.to_thread(
        verl.compute_score_batch,
        ["nq"] * 3,
        COMPLETIONS,
        ["Paris", ["paris"], {"target": ["Paris"]}],
        [extra] * 3,
        target=target,
    )
    assert [b["score"] for b in batch] == pytest.approx([1.0, -1.0, 0.4])
    assert {k for b in batch for k in b} == set(one)  # the same keys for every sample, as verl needs
    # Several replicas (comma-separated) go through the replica client: one result per rollout.
    replicated = await verl.compute_score_async("nq", GOOD, "Paris", extra, target=f"{target}, {target}")
    assert replicated == one
    with pytest.raises(ValueError, match="verl sends no training step"):
        await verl.compute_score_async("nq", GOOD, "Paris", {"question": "q"}, target=target)


def _post(url: str, body: object) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def test_openrlhf_http_endpoint(tiny_server: ProctorServer) -> None:
    assert tiny_server.http is not None
    url = f"http://127.0.0.1:{tiny_server.http.port}/reward"
    body = {
        "query": [p + c for p, c in zip(PROMPTS, COMPLETIONS, strict=True)],
        "prompts": PROMPTS,
        "labels": ["Paris"] * 3,
    }
    status, out = await asyncio.to_thread(_post, url + "?training_step=100", body)
    assert status == 200, out
    assert out["rewards"] == pytest.approx([1.0, -1.0, 0.4]) and out["scores"] == out["rewards"]
    # r_atom is absent: the malformed rollout has none, and OpenRLHF makes a tensor of every value (no null).
    assert set(out["extra_logs"]) == {"proctor_fallback", "r_f1", "alpha", "format_ok", "training_step"}  # type: ignore[arg-type]
    status, out = await asyncio.to_thread(_post, url, body)
    assert status == 400 and "OpenRLHF sends no training step" in str(out["error"])
    status, out = await asyncio.to_thread(_post, url, {**body, "labels": ["Paris"], "training_step": 1})
    assert status == 400 and "differ in length" in str(out["error"])


async def test_openrlhf_rollouts_that_cannot_be_scored_get_the_fallback(tiny_server: ProctorServer) -> None:
    assert tiny_server.http is not None
    url = f"http://127.0.0.1:{tiny_server.http.port}/reward"
    fallbacks = tiny_server.metrics.reward_fallbacks.labels("training_step")
    before = fallbacks._value.get()
    body = {"query": ["Q? " + NO_ATOMS], "prompts": ["Q? "], "labels": ["Paris"], "training_step": 500}
    status, out = await asyncio.to_thread(_post, url, body)
    assert status == 200, out  # OpenRLHF would retry anything else, then crash on the missing reward
    assert out["rewards"] == [-1.0] and out["extra_logs"] == {"proctor_fallback": [1.0]}
    assert out["errors"][0]["field"] == "training_step"  # type: ignore[index]
    assert fallbacks._value.get() - before == 1
    unrelated = {"query": ["something else entirely"], "prompts": ["Q? "], "labels": ["Paris"], "training_step": 1}
    status, out = await asyncio.to_thread(_post, url, unrelated)
    assert status == 200 and out["errors"][0]["field"] == "query", out  # type: ignore[index]


async def test_openrlhf_queries_and_labels_as_openrlhf_sends_them(tiny_server: ProctorServer) -> None:
    """The query is decoded prompt tokens + response tokens; the prompt may be cut from the left (max_len), the
    cut may split a character (U+FFFD); labels are strings, lists, JSON lists in a string, or empty."""
    assert tiny_server.http is not None
    url = f"http://127.0.0.1:{tiny_server.http.port}/reward?training_step=100"
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    answer = "<think>t</think><answer>Paris</answer><|im_end|>"
    queries = [prompt + answer, prompt[-20:] + answer, "\ufffd" + prompt[-9:] + answer, prompt + answer]
    labels: list[object] = ["Paris", ["Lyon", "Paris"], '["Lyon", "Paris"]', ""]
    body = {"query": queries, "prompts": [prompt] * 4, "labels": labels}
    status, out = await asyncio.to_thread(_post, url, body)
    assert status == 200, out
    assert out["rewards"] == [1.0, 1.0, 1.0, 0.0]  # no label: R_f1 = 0 by the rule


async def test_openrlhf_run_key_anneals_alpha(tiny_server: ProctorServer) -> None:
    """OpenRLHF sends one rollout a POST and no step: the URL names the run; T advances every 3 rollouts."""
    assert tiny_server.http is not None
    url = f"http://127.0.0.1:{tiny_server.http.port}/reward?run=openrlhf-anneal&rollouts_per_step=3&total_steps=2"
    alphas = []
    for _ in range(9):
        body = {"query": ["Q? " + NO_ATOMS], "prompts": ["Q? "], "labels": ["Paris"]}
        status, out = await asyncio.to_thread(_post, url, body)
        assert status == 200, out
        alphas.append(out["extra_logs"]["alpha"][0])  # type: ignore[index]
    assert alphas == pytest.approx([0.5] * 3 + [0.25] * 3 + [0.0] * 3)


async def test_openrlhf_on_error_fail_answers_422(tiny_server: ProctorServer) -> None:
    """reward.openrlhf.on_error: fail — the route itself, with a rules-only scorer and the server's reward service."""
    assert tiny_server.http is not None
    svc = tiny_server.http.contexts["proctor.v1.RewardModel"]
    core = RewardCore(RewardScorer(RewardSettings(mode="rules", total_steps=10), None), None, svc)
    route = openrlhf.OpenRLHFRoute(core, "fail", -1.0)
    body = {"query": ["Q? " + NO_ATOMS, "Q? " + NO_ATOMS], "prompts": ["Q? "] * 2, "labels": ["Paris"] * 2}
    parsed = openrlhf.parse_body(json.dumps({**body, "training_step": 11}).encode(), {})
    status, out = await route.answer(*parsed)
    assert status == 422 and [i["field"] for i in out["items"]] == ["training_step"] * 2
    status, out = await route.answer(*openrlhf.parse_body(json.dumps(body).encode(), {"training_step": "10"}))
    assert status == 200 and out["rewards"] == pytest.approx([0.4, 0.4]) and "errors" not in out
