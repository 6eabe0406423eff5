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
from proctor.engine.server.grpc_server import ProctorServer

from .test_reward_service import GOOD, MALFORMED, NO_ATOMS

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
    assert set(out["extra_logs"]) == {"r_f1", "r_atom", "alpha", "format_ok"}  # type: ignore[arg-type]
    status, out = await asyncio.to_thread(_post, url, body)
    assert status == 400 and "training_step" in str(out["error"])
    status, out = await asyncio.to_thread(_post, url, {**body, "training_step": 500})
    assert status == 422 and out["items"][0]["field"] == "training_step"  # type: ignore[index]
    status, out = await asyncio.to_thread(_post, url, {**body, "labels": ["Paris"], "training_step": 1})
    assert status == 400 and "differ in length" in str(out["error"])
