"""TRL, its real package (1.16): GRPOTrainer's own training loop on the CPU with the tiny policy, taking its
rewards from proctor through both adapters; α anneals from 0.5 to 0 over the run (TRL's logs say so)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from proctor.engine.backends.builtin_models import resolve_model
from tests.trainers.conftest import require

trl = require("trl")
from datasets import Dataset  # noqa: E402

from proctor.clients.trl import AsyncProctorReward, ProctorReward  # noqa: E402

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.mark.parametrize("adapter", [ProctorReward, AsyncProctorReward])
async def test_grpo_trainer_takes_rewards_from_proctor(target: str, tmp_path: Path, adapter: type) -> None:
    steps = 3
    dataset = Dataset.from_dict(
        {"prompt": ["What is the capital of France?", "Who wrote Hamlet?"] * 4, "answer": ["Paris", "Shakespeare"] * 4}
    )
    config = trl.GRPOConfig(
        output_dir=str(tmp_path),
        max_steps=steps,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        seed=0,
    )
    trainer = trl.GRPOTrainer(
        model=resolve_model("builtin:tiny"),
        reward_funcs=[adapter(target, gold_column="answer")],
        args=config,
        train_dataset=dataset,
    )
    await asyncio.to_thread(trainer.train)  # the server shares this test's loop: TRL trains on its own thread
    logged = [entry for entry in trainer.state.log_history if "proctor/alpha" in entry]
    assert [entry["proctor/training_step"] for entry in logged] == [0, 1, 2]
    assert [entry["proctor/alpha"] for entry in logged] == pytest.approx([0.5, 0.25, 0.0])
    # The tiny random policy writes no well-formed rollout: every reward is the malformed one, -1.
    assert all(entry["rewards/proctor_reward/mean"] == -1.0 for entry in logged)
