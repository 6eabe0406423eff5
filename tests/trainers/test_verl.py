"""verl, its real package (0.9.1, installed --no-deps with what its reward path imports): its Hydra `ppo_trainer`
config, its RewardLoopWorker and reward managers with real DataProtos, against a running proctor.

What verl does per training step is what these tests do: the reward loop worker gets the step's batch (or the
agent loop hands it one finished sample at a time) and calls the configured reward function or manager. Each test
runs several steps and checks that α anneals from 0.5 to 0 with nothing sent but what verl itself sends.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from proctor.engine.backends.builtin_models import resolve_model
from tests.engine.doors.grpc.test_reward_service import GOOD, MALFORMED, NO_ATOMS
from tests.trainers.conftest import require

verl = require("verl")
from hydra import compose, initialize_config_dir  # noqa: E402  (after the package check)
from verl import DataProto  # noqa: E402
from verl.experimental.reward_loop import RewardLoopWorker  # noqa: E402
from verl.workers.reward_manager.batch import BatchRewardManager  # noqa: E402

import proctor.clients.verl as proctor_verl  # noqa: E402
import proctor.clients.verl_manager as proctor_manager  # noqa: E402
from proctor.clients.coalesce import coalescer_for_loop  # noqa: E402

pytestmark = pytest.mark.asyncio(loop_scope="session")

QUESTION = "What is the capital of France?"
KEYS = {"score", "r_f1", "alpha", "atom_reward", "format_ok", "atom_count", "training_step"}


def ppo_config(*overrides: str) -> Any:
    """verl's own ppo_trainer config with the tiny model's tokenizer and the given command-line overrides."""
    config_dir = Path(verl.__file__).parent / "trainer" / "config"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return compose(
            "ppo_trainer", overrides=[f"actor_rollout_ref.model.path={resolve_model('builtin:tiny')}", *overrides]
        )


def batch(
    tokenizer: Any,
    responses: list[str],
    meta_info: dict[str, Any] | None = None,
    split: str = "train",
    question_in_extra_info: bool = True,
) -> DataProto:
    """A step's batch as verl's agent loop leaves it: prompts left-padded, responses right-padded, one mask. A
    reward function sees only extra_info, so the dataset puts the question there; the manager reads raw_prompt."""
    extra = {"question": QUESTION} if question_in_extra_info else {}
    chat = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": QUESTION}]
    prompt = tokenizer.encode(QUESTION, add_special_tokens=False)
    encoded = [tokenizer.encode(r, add_special_tokens=False) for r in responses]
    width = max(len(e) for e in encoded) + 3  # padding after every response
    rows = len(responses)
    prompts = torch.tensor([prompt] * rows)
    response_ids = torch.zeros(rows, width, dtype=torch.long)
    response_mask = torch.zeros(rows, width, dtype=torch.long)
    for i, ids in enumerate(encoded):
        response_ids[i, : len(ids)] = torch.tensor(ids)
        response_mask[i, : len(ids)] = 1
    attention_mask = torch.cat([torch.ones_like(prompts), response_mask], dim=1)
    input_ids = torch.cat([prompts, response_ids], dim=1)
    non_tensors = {
        "data_source": np.array(["nq"] * rows, dtype=object),
        "reward_model": np.array([{"ground_truth": {"target": ["Paris"]}, "style": "rule"}] * rows, dtype=object),
        "extra_info": np.array([{"split": split, "index": i, **extra} for i in range(rows)], dtype=object),
        "raw_prompt": np.array([chat] * rows, dtype=object),
    }
    return DataProto.from_dict(
        tensors={
            "prompts": prompts,
            "responses": response_ids,
            "attention_mask": attention_mask,
            "input_ids": input_ids,
            "position_ids": torch.cumsum(attention_mask, dim=1) - 1,
        },
        non_tensors=non_tensors,
        meta_info=meta_info or {},
    )


def check_outputs(outputs: list[dict[str, Any]], want_rewards: list[float], alpha: float, step: int) -> None:
    """What verl's RewardLoopManager.compute_rm_score reads: reward_score, and reward_extra_info with the same
    keys for every sample (it builds one numpy column per key of the first) and no NaN (verl averages them)."""
    assert [o["reward_score"] for o in outputs] == pytest.approx(want_rewards, abs=1e-6)
    for o in outputs:
        info = o["reward_extra_info"]
        assert KEYS <= set(info), info
        assert all(not (isinstance(v, float) and math.isnan(v)) for v in info.values()), info
        assert info["alpha"] == pytest.approx(alpha) and info["training_step"] == step
    assert len({frozenset(o["reward_extra_info"]) for o in outputs}) == 1


def worker(config: Any) -> Any:
    return RewardLoopWorker(config, reward_router_address=None)


@pytest.mark.parametrize("name", ["compute_score_async", "compute_score"])
async def test_reward_function_through_verls_reward_loop(target: str, name: str) -> None:
    """The README's reward-function lines; three steps of 6 rollouts; T counted on the server for the run."""
    run = f"verl-fn-{name}"
    config = ppo_config(
        f"reward.custom_reward_function.path={proctor_verl.__file__}",
        f"reward.custom_reward_function.name={name}",
        f"+reward.custom_reward_function.reward_kwargs.target={target}",
        f"+reward.custom_reward_function.reward_kwargs.run={run}",
        "+reward.custom_reward_function.reward_kwargs.rollouts_per_step=6",
        "+reward.custom_reward_function.reward_kwargs.total_steps=2",
    )
    loop_worker = worker(config)
    responses = [GOOD, MALFORMED, NO_ATOMS] * 2
    for step, alpha in enumerate([0.5, 0.25, 0.0]):
        outputs = await loop_worker.compute_score_batch(batch(loop_worker.input_tokenizer, responses))
        rewards = [o["reward_score"] for o in outputs]
        assert rewards[1] == -1.0 and rewards[4] == -1.0  # malformed
        assert rewards[2] == pytest.approx(alpha * 0.0 + (1 - alpha) * 0.4)  # no atoms: R_atom 0, R_f1 0.4
        check_outputs(outputs, rewards, alpha, step)
    # Validation rollouts (extra_info.split = test) take the run's T without moving it.
    outputs = await loop_worker.compute_score_batch(batch(loop_worker.input_tokenizer, [NO_ATOMS] * 4, split="test"))
    check_outputs(outputs, [0.4] * 4, 0.0, 2)  # after the last step: that step's T


async def test_reward_function_calls_are_coalesced(target: str) -> None:
    """verl's agent loop hands the worker one sample at a time, hundreds at once: they share few streams."""
    config = ppo_config(
        f"reward.custom_reward_function.path={proctor_verl.__file__}",
        "reward.custom_reward_function.name=compute_score_async",
        f"+reward.custom_reward_function.reward_kwargs.target={target}",
        "+reward.custom_reward_function.reward_kwargs.run=verl-coalesce",
        "+reward.custom_reward_function.reward_kwargs.rollouts_per_step=512",
        "+reward.custom_reward_function.reward_kwargs.total_steps=1",
    )
    loop_worker = worker(config)
    data = batch(loop_worker.input_tokenizer, [NO_ATOMS] * 512)
    coalescer = coalescer_for_loop(target)
    before = coalescer.streams
    outputs = await asyncio.gather(*(loop_worker.compute_score(data[i : i + 1]) for i in range(len(data))))
    assert [o["reward_score"] for o in outputs] == pytest.approx([0.5 * 0.0 + 0.5 * 0.4] * 512)
    assert coalescer.streams - before <= 8, "512 concurrent calls should share a handful of streams"


async def test_proctor_reward_manager_takes_everything_from_verl(target: str) -> None:
    """reward.reward_manager from this module: the question from raw_prompt, T from meta_info['global_steps'] where
    verl gives it, else counted for project/experiment at train_batch_size x n; T_MAX from total_training_steps."""
    config = ppo_config(
        "reward.reward_manager.source=importlib",
        "reward.reward_manager.name=ProctorRewardManager",
        f"reward.reward_manager.module.path={proctor_manager.__file__}",
        f"+reward.reward_kwargs.target={target}",
        "data.train_batch_size=2",
        "actor_rollout_ref.rollout.n=3",
        "trainer.total_training_steps=3",
        "trainer.project_name=proctor",
        "trainer.experiment_name=manager-test",
    )
    loop_worker = worker(config)
    assert type(loop_worker.reward_manager).__name__ == "ProctorRewardManager"
    tokenizer = loop_worker.input_tokenizer
    responses = [GOOD, MALFORMED, NO_ATOMS] * 2
    for global_steps, alpha in [(1, 0.5), (2, 0.25), (3, 0.0)]:  # verl counts steps from 1; T = global_steps - 1
        data = batch(tokenizer, responses, meta_info={"global_steps": global_steps}, question_in_extra_info=False)
        outputs = await loop_worker.compute_score_batch(data)
        check_outputs(outputs, [o["reward_score"] for o in outputs], alpha, global_steps - 1)
        scores = [o["reward_score"] for o in outputs]
        rm_scores = loop_worker.reward_manager.assemble_rm_scores(data, scores)  # what compute_rm_score does next
        assert rm_scores.sum(dim=-1).tolist() == pytest.approx(scores, abs=1e-6)
    # verl 0.9's streaming reward path carries no step: counted for proctor/manager-test, 6 rollouts a step.
    for step, alpha in enumerate([0.5, 0.25, 0.0]):
        outputs = await loop_worker.compute_score_batch(batch(tokenizer, responses, question_in_extra_info=False))
        check_outputs(outputs, [o["reward_score"] for o in outputs], alpha, step)


async def test_batch_reward_manager_of_verl_0_6(target: str) -> None:
    """verl ≤ 0.6's BatchRewardManager (the same class ships in verl 0.9.1 as workers/reward_manager/batch.py)
    with compute_score_batch: the whole step on one stream."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("builtin:tiny"))
    manager = BatchRewardManager(
        tokenizer,
        0,
        proctor_verl.compute_score_batch,
        target=target,
        run="verl-batch",
        rollouts_per_step=3,
        total_steps=2,
    )
    for step, alpha in enumerate([0.5, 0.25, 0.0]):
        data = batch(tokenizer, [GOOD, MALFORMED, NO_ATOMS])
        out = await asyncio.to_thread(manager, data, return_dict=True)  # verl calls it from its driver thread
        info = out["reward_extra_info"]
        assert info["alpha"] == pytest.approx([alpha] * 3) and info["training_step"] == [step] * 3
        assert out["reward_tensor"].sum(dim=-1)[1] == -1.0
        assert not any(math.isnan(v) for values in info.values() for v in values)
