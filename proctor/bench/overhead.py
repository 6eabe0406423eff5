"""Serving overhead: the same work through gRPC and through the backend called in-process, in the same run.

    python -m proctor.bench.overhead --items 20000 --rounds 5

Workloads: rule-only rewards (no model: the overhead *is* the cost) on ~6 KB multi-turn rollouts, one item per
message (Reward) and 256 per message (RewardBatched, with full atoms and with `atom_detail: NONE`, what the trainer
adapters send); SKD triples on the tiny critic (5 name draws each, 256 per ClassifyBatched message); and Score with
the tiny model, one item per message (Score) and 64 per message (ScoreBatched). The server runs as its own process
(as in production); the client streams every item on one call. The rule-reward and the Score variants run in
interleaved rounds with their in-process baseline, as this machine's speed drifts: each figure is the median over
rounds, and the overhead the median of each round's difference. Besides wall time per item, the server's own CPU
time per item is read from /proc: its inverse is the throughput per server core. Writes
bench/results/YYYY-MM-DD-cpu-overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from proctor.bench import load
from proctor.bench.load import _rollout
from proctor.bench.server import cpu_seconds, serve
from proctor.clients.reward import RewardClient, reward_request
from proctor.clients.teacher import TeacherClient, score_request
from proctor.engine.backends.builtin_models import resolve_model
from proctor.engine.backends.torch.classifier import TorchClassifier
from proctor.engine.backends.torch.generator import TorchGenerator
from proctor.engine.config import CriticConfig
from proctor.engine.doors.grpc.convert import RELATIONS
from proctor.engine.items import ScoreItem
from proctor.engine.skd.critic_scoring import CriticScorer
from proctor.v1 import critic_pb2, critic_pb2_grpc

RESULTS = Path(__file__).resolve().parent / "results"
CONFIG = """server: {port: 0, metrics_port: -1}
teacher: {model: builtin:tiny, device: cpu}
critic: {model: builtin:tiny-critic, device: cpu, cutoff: 0.5}
reward: {model: '', mode: rules, total_steps: 100000}
"""


def measure(items: int, rounds: int) -> dict[str, Any]:
    import random

    rng = random.Random(0)
    rollouts = [_rollout(rng) for _ in range(items)]
    full = [reward_request(f"r{i}", "Capital of France?", r, "Paris", 5) for i, r in enumerate(rollouts)]
    bare = [reward_request(f"r{i}", "Capital of France?", r, "Paris", 5, atoms="none") for i, r in enumerate(rollouts)]
    scores = [
        score_request(f"s{i}", [rng.randint(3, 400) for _ in range(32)], [rng.randint(3, 400) for _ in range(32)])
        for i in range(items // 20)
    ]

    # The in-process Score runs in rounds with the gRPC ones (the machine's speed drifts): one loop keeps the backend.
    score_loop = asyncio.Runner()
    score_backend = TorchGenerator("builtin:tiny", device="cpu")
    score_loop.run(score_backend.start())
    # As the server does once its models are loaded: what is loaded leaves the collector's generations, so a full
    # collection walks only what the work makes (without it, the in-process baseline pays collections the server
    # does not, and reads slower than gRPC).
    gc.freeze()
    score_items = [ScoreItem(list(s.context.token_ids.ids), list(s.target.token_ids.ids)) for s in scores]

    async def score_all(batch: list[ScoreItem]) -> None:
        await asyncio.gather(*(score_backend.score(x) for x in batch))

    classify = [load.workloads(2048)["skd"].make(rng, i) for i in range(items // 5)]
    triples = [(c.triple.head, RELATIONS[c.triple.relation], c.triple.tail, None) for c in classify]

    async def direct_triples() -> float:
        backend = TorchClassifier("builtin:tiny-critic", device="cpu")
        await backend.start()
        gc.freeze()
        config = CriticConfig(model="builtin:tiny-critic", device="cpu", cutoff=0.5)
        critic = CriticScorer(backend, config, lambda: Path(resolve_model(config.model)))
        await asyncio.gather(*(critic.score_triple(*t) for t in triples[:256]))  # warm-up
        t0 = time.perf_counter()
        await asyncio.gather(*(critic.score_triple(*t) for t in triples))
        seconds = time.perf_counter() - t0
        await backend.close()
        return seconds

    score_loop.run(score_all(score_items[:50]))  # warm-up
    triples_direct = asyncio.run(direct_triples())
    wall: dict[str, list[float]] = {}
    server_cpu: dict[str, list[float]] = {}
    score_wall: dict[str, list[float]] = {}
    score_cpu: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        proc, target, _ = serve(Path(folder), CONFIG)
        try:
            with RewardClient(target) as client:

                def over_grpc(requests: list[Any], batch_size: int) -> Callable[[], None]:
                    def run() -> None:
                        out = client.reward(requests, batch_size=batch_size)
                        assert len(out) == items and not any(r.HasField("error") for r in out.values())

                    return run

                variants: dict[str, Callable[[], None]] = {
                    "in_process": lambda: load.rule_rewards(full, total_steps=100000),
                    "grpc_per_message": over_grpc(full, 0),
                    "grpc_batched": over_grpc(full, 256),
                    "grpc_batched_no_atoms": over_grpc(bare, 256),
                }
                client.reward(full[:500], batch_size=0)  # warm-up
                client.reward(full[:500], batch_size=256)
                for _ in range(rounds):
                    for name, run in variants.items():
                        cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
                        run()
                        wall.setdefault(name, []).append((time.perf_counter() - t0) / items)
                        if name != "in_process":
                            server_cpu.setdefault(name, []).append((cpu_seconds(proc.pid) - cpu0) / items)
            messages = [critic_pb2.ClassifyBatch(items=classify[i : i + 256]) for i in range(0, len(classify), 256)]
            with grpc.insecure_channel(target) as channel:
                stub = critic_pb2_grpc.CriticStub(channel)
                list(stub.ClassifyBatched(iter(messages[:1])))  # warm-up
                cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
                answered = [r for reply in stub.ClassifyBatched(iter(messages)) for r in reply.items]
                triples_grpc = time.perf_counter() - t0
                triples_cpu = cpu_seconds(proc.pid) - cpu0
                assert len(answered) == len(triples) and not any(r.HasField("error") for r in answered)
            with TeacherClient(target) as teacher:

                def score_over_grpc(batch_size: int) -> Callable[[], None]:
                    def run() -> None:
                        out = teacher.score(scores, batch_size=batch_size)
                        assert len(out) == len(scores) and not any(r.HasField("error") for r in out.values())

                    return run

                score_variants: dict[str, Callable[[], None]] = {
                    "in_process": lambda: score_loop.run(score_all(score_items)),
                    "grpc_per_message": score_over_grpc(0),
                    "grpc_batched": score_over_grpc(64),
                }
                teacher.score(scores[:50], batch_size=0)  # warm-up
                teacher.score(scores[:50], batch_size=64)
                for _ in range(rounds):
                    for name, run in score_variants.items():
                        cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
                        run()
                        score_wall.setdefault(name, []).append((time.perf_counter() - t0) / len(scores))
                        if name != "in_process":
                            score_cpu.setdefault(name, []).append((cpu_seconds(proc.pid) - cpu0) / len(scores))
        finally:
            proc.terminate()
            proc.wait()
            score_loop.run(score_backend.close())
            score_loop.close()
    us = 1e6
    median = {name: statistics.median(values) * us for name, values in wall.items()}
    cpu = {name: statistics.median(values) * us for name, values in server_cpu.items()}
    report: dict[str, Any] = {
        "device": "CPU",
        "cores": os.cpu_count(),
        "command": "python -m proctor.bench.overhead " + " ".join(sys.argv[1:]),
        "rule_reward_items": items,
        "rounds": rounds,
        "rule_reward_in_process_us_per_item": median["in_process"],
    }
    for name in ("grpc_per_message", "grpc_batched", "grpc_batched_no_atoms"):
        report[f"rule_reward_{name}_us_per_item"] = median[name]
        # Paired by round: the machine's speed drifts between rounds, not within one.
        paired = [(v - a) * us for v, a in zip(wall[name], wall["in_process"], strict=True)]
        report[f"rule_reward_{name}_overhead_us_per_item"] = statistics.median(paired)
        report[f"rule_reward_{name}_items_per_s"] = us / median[name]
        report[f"rule_reward_{name}_server_cpu_us_per_item"] = cpu[name]
        report[f"rule_reward_{name}_items_per_server_core_s"] = us / cpu[name]
    report["rule_reward_wall_us_per_item_every_round"] = {n: [round(v * us, 1) for v in w] for n, w in wall.items()}
    report.update(
        {
            "critic_triples": len(triples),
            "critic_in_process_us_per_triple": triples_direct / len(triples) * us,
            "critic_grpc_batched_us_per_triple": triples_grpc / len(triples) * us,
            "critic_overhead_us_per_triple": (triples_grpc - triples_direct) / len(triples) * us,
            "critic_grpc_server_cpu_us_per_triple": triples_cpu / len(triples) * us,
            "score_items": len(scores),
            "score_in_process_us_per_item": statistics.median(score_wall["in_process"]) * us,
        }
    )
    for name in ("grpc_per_message", "grpc_batched"):
        paired = [(v - a) * us for v, a in zip(score_wall[name], score_wall["in_process"], strict=True)]
        ratios = [v / a - 1 for v, a in zip(score_wall[name], score_wall["in_process"], strict=True)]
        report[f"score_{name}_us_per_item"] = statistics.median(score_wall[name]) * us
        report[f"score_{name}_overhead_us_per_item"] = statistics.median(paired)
        report[f"score_{name}_overhead_fraction"] = statistics.median(ratios)
        report[f"score_{name}_server_cpu_us_per_item"] = statistics.median(score_cpu[name]) * us
    report["score_wall_us_per_item_every_round"] = {n: [round(v * us, 1) for v in w] for n, w in score_wall.items()}
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of every rule-reward variant")
    args = p.parse_args()
    report = measure(args.items, args.rounds)
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
