"""`proctor serve` as a real process: SIGTERM drain, grpcurl, config errors."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from proctor.clients.teacher import TeacherClient, generate_request
from tests.conftest import TINY

TEACHER_CONFIG = (
    f"server: {{port: 0, metrics_port: -1, drain_grace_s: 60}}\nteacher: {{model: '{TINY}', device: cpu}}\n"
)


class ServerProcess:
    """`proctor serve` in a subprocess; `port` is read from its first line."""

    def __init__(self, tmp: Path, config_text: str = TEACHER_CONFIG, name: str = "proctor.yaml") -> None:
        config = tmp / name
        config.write_text(config_text)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proctor.engine.cli", "serve", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.port = 0
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(120):
            self.proc.kill()
            raise AssertionError("server did not become ready:\n" + "".join(self.lines))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            found = re.search(r"listening on [\d.]+:(\d+)", line)
            if found:
                self.port = int(found.group(1))
            if "proctor: ready" in line:
                self.ready.set()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path)
    yield proc
    if proc.proc.poll() is None:
        proc.proc.kill()
        proc.proc.wait()


def test_sigterm_drains_in_flight_items_then_exits_0(server: ServerProcess) -> None:
    ids = [f"item{i}" for i in range(6)]
    results: dict[str, object] = {}

    def stream() -> None:
        with TeacherClient(server.target) as client:
            results.update(
                client.generate(generate_request(i, "Hello", max_tokens=200, ignore_eos=True, n=2) for i in ids)
            )

    worker = threading.Thread(target=stream)
    worker.start()
    time.sleep(0.5)  # items are in the engine
    server.proc.send_signal(signal.SIGTERM)
    worker.join(120)
    assert server.proc.wait(60) == 0, "".join(server.lines)
    assert set(results) == set(ids)
    for item_id, result in results.items():
        assert not result.HasField("error"), (item_id, result.error)  # type: ignore[attr-defined]
        assert all(len(c.token_ids) == 200 for c in result.completions)  # type: ignore[attr-defined]
    assert any("draining" in line for line in server.lines)


def test_new_calls_while_draining_are_unavailable(server: ServerProcess) -> None:
    def long_stream() -> None:
        with TeacherClient(server.target) as client:
            client.generate([generate_request("long", "Hi", max_tokens=1500, ignore_eos=True)])

    worker = threading.Thread(target=long_stream)
    worker.start()
    time.sleep(0.5)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with TeacherClient(server.target) as client:
        try:
            results = client.generate([generate_request("late", "Hi", max_tokens=2)])
            late = results["late"].error
            assert late.code == grpc.StatusCode.UNAVAILABLE.value[0], late
        except grpc.RpcError as exc:  # the listener may already be closed
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
    worker.join(120)
    assert server.proc.wait(60) == 0


def _grpcurl() -> str | None:
    return os.environ.get("PROCTOR_GRPCURL") or shutil.which("grpcurl")


@pytest.mark.skipif(_grpcurl() is None, reason="grpcurl not installed (.ci/run installs it)")
def test_grpcurl_lists_services_and_calls_them(server: ServerProcess) -> None:
    grpcurl = _grpcurl()
    assert grpcurl is not None

    def run(*args: str) -> str:
        done = subprocess.run([grpcurl, "-plaintext", *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    listed = run(server.target, "list").split()
    assert {"proctor.v1.Teacher", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= set(listed)
    assert '"SERVING"' in run("-d", '{"service": "proctor.v1.Teacher"}', server.target, "grpc.health.v1.Health/Check")
    out = run(
        "-d",
        '{"id": "g", "prompt": {"text": "Hello"}, "params": {"n": 2, "max_tokens": 3, "logprobs": true}}',
        server.target,
        "proctor.v1.Teacher/Generate",
    )
    assert out.count('"index"') == 1 and out.count('"token_ids"') == 2  # index 0 is omitted as a default


def test_a_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("teacher: {model: builtin:tiny, temprature: 1}\n")
    done = subprocess.run(
        [sys.executable, "-m", "proctor.engine.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "teacher: unknown key(s) temprature" in done.stderr
