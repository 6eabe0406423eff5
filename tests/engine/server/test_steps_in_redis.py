"""Two `proctor serve` processes sharing one Redis give one exact count per run; Redis unreachable at start is a
one-line config error (reward.steps.store, engine/stores/redis_steps.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest

from proctor.v1 import reward_pb2, reward_pb2_grpc
from tests.redis_server import RedisServer, free_port

REPO = Path(__file__).resolve().parents[3]
NO_ATOMS = "<think>just thinking</think><answer>the city of Paris</answer>"


def _serve(config: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "proctor.engine.cli", "serve", "--config", str(config)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert process.stdout is not None
    for line in process.stdout:
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if found:
            return process, f"127.0.0.1:{found.group(1)}"
    raise AssertionError("the server did not start")


def test_two_servers_sharing_one_redis_give_one_exact_count(redis_server: RedisServer, tmp_path: Path) -> None:
    config = tmp_path / "reward.yaml"
    config.write_text(
        "server: {port: 0, metrics_port: -1}\n"
        f"reward: {{model: '', mode: rules, total_steps: 100, steps: {{store: '{redis_server.url}'}}}}\n"
    )
    servers = [_serve(config) for _ in range(2)]
    steps: list[int] = []
    lock = threading.Lock()
    run = reward_pb2.StepRun(key="shared", rollouts_per_step=8)

    def trainer(target: str, n: int) -> None:
        requests = [
            reward_pb2.RewardRequest(
                id=f"{target}-{n}-{i}", question="q", response=NO_ATOMS, gold_answers=["Paris"], run=run
            )
            for i in range(20)
        ]
        with grpc.insecure_channel(target) as channel:
            out = list(reward_pb2_grpc.RewardModelStub(channel).Reward(iter(requests), timeout=60))
        assert all(not r.HasField("error") for r in out), out
        with lock:
            steps.extend(r.training_step for r in out)

    try:
        threads = [threading.Thread(target=trainer, args=(servers[i % 2][1], i)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for process, _ in servers:
            process.terminate()
            process.wait(timeout=60)
    assert sorted(steps) == [n // 8 for n in range(160)]


def test_redis_unreachable_at_start_is_a_one_line_config_error(tmp_path: Path) -> None:
    pytest.importorskip("redis")
    config = tmp_path / "reward.yaml"
    url = f"redis://127.0.0.1:{free_port()}/0"
    config.write_text(f"server: {{port: 0, metrics_port: -1}}\nreward: {{mode: rules, steps: {{store: '{url}'}}}}\n")
    done = subprocess.run(
        [sys.executable, "-m", "proctor.engine.cli", "serve", "--config", str(config)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode == 2
    assert f"proctor: config error: reward.steps.store: Redis at {url} does not answer" in done.stderr
    assert "Traceback" not in done.stderr
