"""Config sections are handed whole to what uses them: the RRM's batch limits are its own, and sections that share
a backend must agree on its settings."""

from __future__ import annotations

import pytest

from proctor.engine.backends.torch.generator import TorchGenerator
from proctor.engine.config import Config, ConfigError, RewardConfig, TeacherConfig, load_config
from proctor.engine.cores.metrics import Metrics
from proctor.engine.rewards.pipeline import RewardSettings
from proctor.engine.server.wiring import BackendSet


def _torch_backend(backends: BackendSet, section: str, cfg: TeacherConfig | RewardConfig) -> TorchGenerator:
    generator, _ = backends.generator(section, cfg)  # builds the backend; nothing is loaded before start()
    assert isinstance(generator, TorchGenerator)
    return generator


def test_the_rrm_has_its_own_batch_limits() -> None:
    config = load_config(None, {"reward": {"model": "builtin:tiny", "backend": "torch", "device": "cpu",
                                           "max_batch_seqs": 3, "max_score_tokens": 512}})  # fmt: skip
    assert config.reward is not None
    rrm = _torch_backend(BackendSet(Metrics()), "reward", config.reward)
    assert (rrm.policy.max_batch_seqs, rrm.policy.max_score_tokens) == (3, 512)


def test_a_backend_shared_by_teacher_and_reward_needs_the_same_limits() -> None:
    same = {"model": "builtin:tiny", "backend": "torch", "device": "cpu", "max_batch_seqs": 8}
    config = Config(teacher=TeacherConfig(**same), reward=RewardConfig(**same))
    backends = BackendSet(Metrics())
    assert config.teacher is not None and config.reward is not None
    teacher = _torch_backend(backends, "teacher", config.teacher)
    assert _torch_backend(backends, "reward", config.reward) is teacher, "one model, one backend"

    config = Config(teacher=TeacherConfig(**same), reward=RewardConfig(**{**same, "max_batch_seqs": 16}))
    backends = BackendSet(Metrics())
    assert config.teacher is not None and config.reward is not None
    _torch_backend(backends, "teacher", config.teacher)
    with pytest.raises(ConfigError, match=r"reward\.max_batch_seqs: differs from teacher\.max_batch_seqs"):
        _torch_backend(backends, "reward", config.reward)


def test_the_reward_section_is_the_scorers_settings() -> None:
    config = load_config(None, {"reward": {"model": "", "mode": "rules", "total_steps": 7, "aggregation": "min"}})
    assert isinstance(config.reward, RewardSettings), "handed whole to RewardScorer, not copied field by field"
    assert (config.reward.total_steps, config.reward.aggregation) == (7, "min")
    with pytest.raises(ConfigError, match=r"reward\.max_score_tokens: must be >= 1"):
        load_config(None, {"reward": {"max_score_tokens": 0}})
