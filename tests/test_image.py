"""The container image (Containerfile) run for real: health SERVING within 60 s, one Generate, one Score, one Reward,
the HTTP front's /health and /v1/models, /metrics scraped, then `stop` drains and the process exits 0.

Runs only when PROCTOR_IMAGE names a built image with builtin:smollm2 baked in (deploy/image/ci.sh builds one and
runs this); PROCTOR_PODMAN is the engine's command line ("podman --root ... --runroot ...", or "docker").
A failure prints the container's log.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from proctor.v1 import common_pb2, reward_pb2, reward_pb2_grpc, teacher_pb2, teacher_pb2_grpc

IMAGE = os.environ.get("PROCTOR_IMAGE", "")
pytestmark = pytest.mark.skipif(not IMAGE, reason="PROCTOR_IMAGE is not set (deploy/image/ci.sh builds and sets it)")

DRAIN_GRACE_S = 20


def _engine(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    command = [*shlex.split(os.environ.get("PROCTOR_PODMAN", "podman")), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class Container:
    def __init__(self, name: str, grpc_port: int, metrics_port: int, http_port: int) -> None:
        self.name = name
        self.target = f"127.0.0.1:{grpc_port}"
        self.metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        self.http = f"http://127.0.0.1:{http_port}"

    def logs(self) -> str:
        out = _engine("logs", self.name)
        return out.stdout + out.stderr


@pytest.fixture(scope="module")
def container(request: pytest.FixtureRequest) -> Iterator[Container]:
    grpc_port, metrics_port, http_port = _free_ports(3)
    # The container runs as uid 1000: the mounted config must be readable by it.
    folder = Path(tempfile.mkdtemp(prefix="proctor-image-"))
    folder.chmod(0o755)
    config = folder / "proctor.yaml"
    config.write_text(
        f"server: {{host: 127.0.0.1, port: {grpc_port}, metrics_host: 127.0.0.1, metrics_port: {metrics_port}, "
        f"drain_grace_s: {DRAIN_GRACE_S}}}\n"
        f"http: {{host: 127.0.0.1, port: {http_port}}}\n"
        "teacher: {model: builtin:smollm2, device: cpu}\n"
        "reward: {model: '', mode: rules, total_steps: 100}\n"
    )
    config.chmod(0o644)
    name = f"proctor-smoke-{os.getpid()}"
    # Host networking: no bridge or port mapping to set up on a CI machine; the ports above are free ones.
    started = _engine(
        "run", "--detach", "--name", name, "--network", "host", "--volume", f"{config}:/etc/proctor/proctor.yaml:ro",
        IMAGE,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    box = Container(name, grpc_port, metrics_port, http_port)
    failed_before = request.session.testsfailed
    try:
        yield box
    finally:
        if request.session.testsfailed != failed_before:
            # Past pytest's capture: a module fixture's teardown output is otherwise shown only if it fails.
            with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
                print(f"\n--- log of container {name} ---\n{box.logs()}--- end of log ---", flush=True)
        _engine("rm", "--force", "--time", "0", name)
        config.unlink()
        folder.rmdir()


def test_health_is_serving_within_60_s(container: Container) -> None:
    deadline = time.monotonic() + 60
    status = None
    with grpc.insecure_channel(container.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
            except grpc.RpcError:
                status = None
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
            time.sleep(0.5)
    pytest.fail(f"health not SERVING within 60 s (last: {status})")


def test_generate_score_and_reward(container: Container) -> None:
    with grpc.insecure_channel(container.target) as channel:
        teacher = teacher_pb2_grpc.TeacherStub(channel)
        params = teacher_pb2.SamplingParams(temperature=0.0, max_tokens=8)
        prompt = common_pb2.Prompt(text="The capital of France is")
        [generated] = teacher.Generate(iter([teacher_pb2.GenerateRequest(id="g", prompt=prompt, params=params)]))
        assert not generated.HasField("error"), generated.error
        assert "Paris" in generated.completions[0].text

        target = common_pb2.Prompt(text=" Paris.")
        [scored] = teacher.Score(iter([teacher_pb2.ScoreRequest(id="s", context=prompt, target=target)]))
        assert not scored.HasField("error"), scored.error
        assert len(scored.logprobs) == len(scored.target_token_ids) > 0
        assert all(lp <= 0 for lp in scored.logprobs)

        reward = reward_pb2_grpc.RewardModelStub(channel)
        rollout = reward_pb2.RewardRequest(
            id="r",
            question="What is the capital of France?",
            response="<think>just thinking</think><answer>Paris</answer>",
            gold_answers=["Paris"],
            training_step=0,
        )
        [rewarded] = reward.Reward(iter([rollout]))
        assert not rewarded.HasField("error"), rewarded.error
        assert rewarded.format_ok and rewarded.r_f1 == 1.0


def test_http_front_and_metrics(container: Container) -> None:
    with urllib.request.urlopen(f"{container.http}/health", timeout=10) as response:
        assert response.status == 200
    with urllib.request.urlopen(f"{container.http}/v1/models", timeout=10) as response:
        models = json.load(response)
    assert [m["id"] for m in models["data"]] == ["builtin:smollm2"]
    with urllib.request.urlopen(container.metrics, timeout=10) as response:
        metrics = response.read().decode()
    # The calls above are counted, each under its own rpc.
    for rpc in ("Generate", "Score", "Reward"):
        assert any(
            line.startswith("proctor_items_total{") and f'rpc="{rpc}"' in line and 'code="OK"' in line
            for line in metrics.splitlines()
        ), (rpc, metrics[:2000])


def test_stop_drains_and_exits_0(container: Container) -> None:
    stopped = _engine("stop", "--time", str(DRAIN_GRACE_S + 10), container.name, timeout=DRAIN_GRACE_S + 60)
    assert stopped.returncode == 0, stopped.stderr
    state = _engine("inspect", "--format", "{{.State.ExitCode}}", container.name)
    assert state.stdout.strip() == "0", state
    log = container.logs()
    assert "proctor: draining" in log and "proctor: stopped" in log, log
