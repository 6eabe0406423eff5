"""Serving overhead: the same work through gRPC and through the backend called in-process, in the same run.

    python -m proctor.bench.overhead --items 20000

Workloads: rule-only rewards (no model: the overhead *is* the cost), one item per message (Reward) and 256 per
message (RewardBatched), and Score with the tiny model. The server runs as its own process (as in production), the
client streams every item on one call. Reports µs per item each way
and the difference; writes bench/results/YYYY-MM-DD-cpu-overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from proctor.bench.load import _rollout
from proctor.clients.reward import RewardClient, reward_request
from proctor.clients.teacher import TeacherClient, score_request
from proctor.engine.backends.torch_generator import TorchGenerator
from proctor.engine.reward import RewardScorer, RewardSettings, RolloutInput
from proctor.engine.types import ScoreItem

RESULTS = Path(__file__).resolve().parent / "results"
CONFIG = """server: {port: 0, metrics_port: -1}
teacher: {model: builtin:tiny, device: cpu}
reward: {model: '', mode: rules, total_steps: 100000}
"""


def serve(folder: Path, config_text: str) -> tuple[subprocess.Popen[str], str]:
    """`proctor serve` in its own process (as in production); returns it and its address once it is ready."""
    config = folder / "proctor.yaml"
    config.write_text(config_text)
    proc = subprocess.Popen(
        [sys.executable, "-m", "proctor.engine.cli", "--log-level", "WARNING", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    port = ""
    for line in proc.stdout:
        found = re.search(r"listening on [\d.]+:(\d+)", line)
        port = found.group(1) if found else port
        if "proctor: ready" in line:
            break
        if "proctor: failed to load" in line:
            proc.terminate()
            raise RuntimeError(line.strip())
    else:
        raise RuntimeError(f"proctor serve exited with {proc.wait()} before it was ready")
    # Keep reading: a full pipe would block the server (and vLLM's engine process, which logs to stdout too).
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return proc, f"127.0.0.1:{port}"


def measure(items: int) -> dict[str, Any]:
    import random

    rng = random.Random(0)
    rewards = [reward_request(f"r{i}", "Capital of France?", _rollout(rng), "Paris", 5) for i in range(items)]
    scores = [
        score_request(f"s{i}", [rng.randint(3, 400) for _ in range(32)], [rng.randint(3, 400) for _ in range(32)])
        for i in range(items // 20)
    ]
    scorer = RewardScorer(RewardSettings(mode="rules", total_steps=100000), None)

    async def direct_rewards() -> float:
        t0 = time.perf_counter()
        for r in rewards:
            await scorer.score(RolloutInput(r.question, r.response, list(r.gold_answers), r.training_step))
        return time.perf_counter() - t0

    async def direct_scores() -> float:
        backend = TorchGenerator("builtin:tiny", device="cpu")
        await backend.start()
        batch = [ScoreItem(list(s.context.token_ids.ids), list(s.target.token_ids.ids)) for s in scores]
        await asyncio.gather(*(backend.score(x) for x in batch[:50]))  # warm-up
        t0 = time.perf_counter()
        await asyncio.gather(*(backend.score(x) for x in batch))
        seconds = time.perf_counter() - t0
        await backend.close()
        return seconds

    reward_direct = asyncio.run(direct_rewards())
    score_direct = asyncio.run(direct_scores())
    with tempfile.TemporaryDirectory() as folder:
        proc, target = serve(Path(folder), CONFIG)
        try:
            with RewardClient(target) as client:
                client.reward(rewards[:500], batch_size=0)  # warm-up
                t0 = time.perf_counter()
                out = client.reward(rewards, batch_size=0)
                reward_grpc = time.perf_counter() - t0
                assert not any(r.HasField("error") for r in out.values())
                t0 = time.perf_counter()
                out = client.reward(rewards, batch_size=256)
                reward_batched = time.perf_counter() - t0
                assert not any(r.HasField("error") for r in out.values())
            with TeacherClient(target) as teacher:
                teacher.score(scores[:50])
                t0 = time.perf_counter()
                scored = teacher.score(scores)
                score_grpc = time.perf_counter() - t0
                assert not any(r.HasField("error") for r in scored.values())
        finally:
            proc.terminate()
            proc.wait()
    us = 1e6
    return {
        "device": "CPU",
        "command": "python -m proctor.bench.overhead " + " ".join(sys.argv[1:]),
        "rule_reward_items": items,
        "rule_reward_in_process_us_per_item": reward_direct / items * us,
        "rule_reward_grpc_us_per_item": reward_grpc / items * us,
        "rule_reward_overhead_us_per_item": (reward_grpc - reward_direct) / items * us,
        "rule_reward_grpc_items_per_s": items / reward_grpc,
        "rule_reward_batched_grpc_us_per_item": reward_batched / items * us,
        "rule_reward_batched_overhead_us_per_item": (reward_batched - reward_direct) / items * us,
        "rule_reward_batched_grpc_items_per_s": items / reward_batched,
        "score_items": len(scores),
        "score_in_process_us_per_item": score_direct / len(scores) * us,
        "score_grpc_us_per_item": score_grpc / len(scores) * us,
        "score_overhead_us_per_item": (score_grpc - score_direct) / len(scores) * us,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=20000)
    args = p.parse_args()
    report = measure(args.items)
    for key, value in report.items():
        print(f"{key:>38}: {value:.1f}" if isinstance(value, float) else f"{key:>38}: {value}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"{dt.date.today().isoformat()}-cpu-overhead"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    lines = ["# Serving overhead: gRPC vs in-process, same run", "", f"Command: `{report['command']}`", "",
             "| | |", "|---|---|"] + [f"| {k} | {v:.1f} |" if isinstance(v, float) else f"| {k} | {v} |"
                                      for k, v in report.items()]  # fmt: skip
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"saved {stem}.{{json,md}}")


if __name__ == "__main__":
    main()
