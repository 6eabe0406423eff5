"""`proctor serve` shortens the GIL switch interval: a worker thread scoring long rollouts held the GIL 5 ms at a
time, and Health waited behind it for up to 250 ms (the hostile bench's "a caller that reads nothing")."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from proctor.engine.cli import main
from proctor.engine.config import ConfigError, ServerConfig


@pytest.fixture
def restored_interval() -> Iterator[None]:
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


def _serve_until_the_metrics_port_fails(tmp_path: Path, server_line: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = tmp_path / "proctor.yaml"
        port = taken.getsockname()[1]
        config.write_text(
            f"server: {{port: 0, metrics_port: {port}{server_line}}}\n"
            "reward: {model: '', mode: rules, total_steps: 10}\n"
        )
        assert main(["serve", "--config", str(config)]) == 2


@pytest.mark.usefixtures("restored_interval")
def test_serve_sets_the_configured_switch_interval(tmp_path: Path) -> None:
    sys.setswitchinterval(0.005)
    _serve_until_the_metrics_port_fails(tmp_path, ", switch_interval_ms: 2")
    assert sys.getswitchinterval() == pytest.approx(0.002)


@pytest.mark.usefixtures("restored_interval")
def test_the_default_is_1_ms_and_0_leaves_pythons(tmp_path: Path) -> None:
    sys.setswitchinterval(0.005)
    _serve_until_the_metrics_port_fails(tmp_path, ", switch_interval_ms: 0")
    assert sys.getswitchinterval() == pytest.approx(0.005)
    _serve_until_the_metrics_port_fails(tmp_path, "")
    assert sys.getswitchinterval() == pytest.approx(0.001)


def test_a_negative_switch_interval_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"server\.switch_interval_ms"):
        ServerConfig(switch_interval_ms=-1)
