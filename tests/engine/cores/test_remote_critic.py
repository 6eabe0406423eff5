"""GenerateTriples' critic at another server (`teacher.remote_critic`): what it needs is checked at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from proctor.engine.config import ConfigError, RemoteCriticConfig
from proctor.engine.cores.remote_critic import RemoteCritic


def test_a_critic_token_variable_that_is_not_set_is_a_start_up_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="NO_SUCH_TOKEN"):
        RemoteCritic("localhost:1", RemoteCriticConfig(token_env="NO_SUCH_TOKEN"))


def test_a_critic_ca_file_that_cannot_be_read_is_a_start_up_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    with pytest.raises(ConfigError, match=r"teacher.remote_critic.ca_file: cannot read .*no-such-ca.pem"):
        RemoteCritic("localhost:1", RemoteCriticConfig(ca_file=str(missing)))
