"""`proctor demo`'s session, on the tiny models: every part runs against a real server and prints its answers."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from proctor.engine.jobs.demo import demo_config, show
from proctor.engine.jobs.train_critic import SHIPPED_SET, recipe, train_critic
from tests.conftest import tiny_config


@pytest.mark.asyncio(loop_scope="session")
async def test_the_demo_session_calls_every_service(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # distill reads the critic's high / medium cut-offs, which only a trained critic publishes: one epoch (~10 s).
    train_critic(SHIPPED_SET, tmp_path / "critic", recipe("small", base_model="builtin:tiny-critic", epochs=1))
    config = tiny_config(default_max_tokens=24)
    assert config.critic is not None
    config.critic = dataclasses.replace(config.critic, model=str(tmp_path / "critic"), cutoff=-1.0)
    capsys.readouterr()
    assert await show(config) == 0
    out = capsys.readouterr().out
    for heading in ("Teacher.Info", "Teacher.Generate", "Teacher.Score", "a bad item fails alone",
                    "RewardModel.Reward", "Critic.Classify", "proctor distill", "Prometheus"):  # fmt: skip
        assert f"== {heading}" in out, heading
    assert "[ok] ok" in out
    assert "[bad] error in field 'params.top_p'" in out
    assert out.count("[malformed] reward -1.000") == 2, "in expected mode and in rules mode"
    verdicts = [line for line in out.splitlines() if re.match(r"(accept|reject) \d\.\d{3} \(cut-off ", line)]
    assert len(verdicts) == 4, "the four triples classified"
    assert "proctor_items_total{" in out
    assert out.rstrip().endswith("demo finished; `proctor serve` runs the server on its own (see README).")


def test_the_demo_serves_its_model_on_free_ports() -> None:
    config = demo_config("builtin:tiny", "cpu")
    assert config.teacher is not None and config.teacher.model == "builtin:tiny"
    assert config.reward is not None and config.reward.model == "builtin:tiny"
    assert (config.server.port, config.server.metrics_port) == (0, 0)


@pytest.mark.asyncio(loop_scope="session")
async def test_the_session_needs_a_teacher_and_a_reward() -> None:
    config = tiny_config()
    config.reward = None
    with pytest.raises(ValueError, match="Teacher and the RewardModel"):
        await show(config)
