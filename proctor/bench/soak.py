"""Soak: a long run over replicas with periodic SIGKILLs; nothing may be lost or delivered twice.

    python -m proctor.bench.soak --minutes 3 --replicas 2 --kill-every 10 --outage-s 10

Starts `--replicas` rules-only RewardModel servers as processes, streams GRPO-step-sized batches (256 x 16
rollouts) through the exactly-once ReplicaClient with its default RetryPolicy, SIGKILLs a random replica every
`--kill-every` seconds and restarts it on the same port; halfway through, every replica is SIGKILLed at once and
kept down for `--outage-s` seconds (shorter than the policy's deadline, so it must cost no item). Every id must
come back exactly once with no final error, and a sample of each step's rewards is checked against the rules
computed in-process (rule rewards are deterministic).
Writes bench/results/YYYY-MM-DD-cpu-soak.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from proctor.clients.replicas import REWARD, ReplicaClient, RetryPolicy
from proctor.clients.reward import reward_request
from proctor.engine.rewards.pipeline import RewardScorer, RewardSettings, RolloutInput

RESULTS = Path(__file__).resolve().parent / "results"
ROLLOUTS = [
    "<think><PLAN>Search first.</PLAN></think><tool_call>{}</tool_call><tool_response>Paris.</tool_response>"
    "<think><OBSERVATION>It says Paris.</OBSERVATION></think><answer>Paris</answer>",
    "<think>no atoms here</think><answer>the city of Paris</answer>",
    "<think><PLAN>never closed <answer>Paris</answer>",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(folder: Path, port: int) -> subprocess.Popen[bytes]:
    config = folder / f"{port}.yaml"
    config.write_text(
        f"server: {{port: {port}, metrics_port: -1}}\nreward: {{model: '', mode: rules, total_steps: 100000}}\n"
    )
    return subprocess.Popen(
        [sys.executable, "-m", "proctor.engine.cli", "--log-level", "WARNING", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _step(step: int, size: int) -> list[Any]:
    return [
        reward_request(f"{step}-{i}", "Which city is the capital of France?", ROLLOUTS[i % 3], "Paris", step)
        for i in range(size)
    ]


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="proctor-soak-"))
    ports = [_free_port() for _ in range(args.replicas)]
    procs = {p: _start(folder, p) for p in ports}
    targets = [f"127.0.0.1:{p}" for p in ports]
    policy = RetryPolicy()
    client = ReplicaClient(targets, REWARD, policy)
    rng = random.Random(args.seed)
    kills = 0
    began = time.monotonic()
    stop = began + args.minutes * 60
    outage: dict[str, float] = {}

    def kill(port: int) -> None:
        nonlocal kills
        procs[port].kill()
        procs[port].wait()
        kills += 1

    async def killer() -> None:
        while time.monotonic() < stop:
            await asyncio.sleep(args.kill_every)
            if args.outage_s and not outage and time.monotonic() - began > args.minutes * 30:
                outage["at_s"] = round(time.monotonic() - began, 1)
                for port in ports:  # every replica at once
                    kill(port)
                await asyncio.sleep(args.outage_s)
                for port in ports:
                    procs[port] = _start(folder, port)
                outage["down_s"] = round(time.monotonic() - began - outage["at_s"], 1)
                continue
            port = rng.choice(ports)
            kill(port)
            await asyncio.sleep(rng.uniform(0.5, 3.0))  # down for a while, then back on the same port
            procs[port] = _start(folder, port)

    await asyncio.sleep(3)  # servers start
    chaos = asyncio.create_task(killer())
    step, items, lost, errors, wrong, unexpected = 0, 0, 0, 0, 0, 0
    scorer = RewardScorer(RewardSettings(mode="rules", total_steps=100000), None)
    started = time.monotonic()
    try:
        while time.monotonic() < stop:
            requests = _step(step, args.step_size)
            results = await client.run(requests)
            items += len(requests)
            lost += sum(1 for r in requests if r.id not in results)
            errors += sum(1 for r in results.values() if r.HasField("error"))
            unexpected += len(set(results) - {r.id for r in requests})
            # Expected values from the rules themselves, computed in-process: deterministic everywhere.
            for r in requests[:: max(1, len(requests) // 64)]:
                want = await scorer.score(RolloutInput(r.question, r.response, list(r.gold_answers), r.training_step))
                wrong += abs(results[r.id].reward - want.reward) > 1e-6
            step += 1
            print(f"step {step}: {items} rollouts, {kills} kills, {client.stats.resent} resent", flush=True)
    finally:
        chaos.cancel()
        await client.close()
        for proc in procs.values():
            proc.kill()
            proc.wait()
    elapsed = time.monotonic() - started
    return {
        "device": "CPU",
        "command": "python -m proctor.bench.soak " + " ".join(sys.argv[1:]),
        "replicas": args.replicas,
        "minutes": round(elapsed / 60, 2),
        "steps": step,
        "rollouts": items,
        "rollouts_per_s": round(items / elapsed, 1),
        "kills": kills,
        "outage_of_every_replica": outage or "none",
        "policy_deadline_s": policy.deadline_s,
        "policy_max_attempts": policy.max_attempts,
        "client_window": client.window,
        "lost": lost,
        "results_for_ids_not_sent": unexpected,
        "duplicates_dropped": client.stats.duplicates_dropped,
        "final_errors": errors,
        "wrong_rewards_in_sample": wrong,
        "resent": client.stats.resent,
        "rounds": client.stats.rounds,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=3)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--kill-every", type=float, default=10)
    p.add_argument("--outage-s", type=float, default=10, help="every replica down at once, halfway; 0 = no outage")
    p.add_argument("--step-size", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    report = asyncio.run(soak(args))
    print(json.dumps(report, indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"{dt.date.today().isoformat()}-cpu-soak"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    lines = ["# Soak: replicas with periodic SIGKILL", "", f"Command: `{report['command']}`", "", "| | |", "|---|---|"]
    stem.with_suffix(".md").write_text("\n".join(lines + [f"| {k} | {v} |" for k, v in report.items()]) + "\n")
    print(f"saved {stem}.{{json,md}}")


if __name__ == "__main__":
    main()
