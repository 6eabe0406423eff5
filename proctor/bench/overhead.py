"""Serving overhead: the same work through gRPC and in-process, in the same run.

    python -m proctor.bench.overhead --items 20000 --rounds 5

Rule-only rewards (no model: the overhead *is* the cost) on ~6 KB multi-turn rollouts, one item per message
(Reward) and 256 per message (RewardBatched, with full atoms and with `atom_detail: NONE`, what the trainer adapters
send); SKD triples on the tiny critic (5 name draws each, 256 per ClassifyBatched message); Score on the tiny model
(32 + 32 tokens, without and with 20 top log-probs), one item per message (Score) and 64 per message
(ScoreBatched, the client's default). The server runs as its own process (as in production); the client streams
every item on one call. Each variant runs in interleaved rounds with its in-process baseline, as this machine's
speed drifts: each figure is the median over rounds, and the overhead the median of each round's paired difference
(Score: and of each round's ratio). Besides wall time per item, the server's own CPU time per item is read from
/proc: its inverse is the throughput per server core.

Score's baseline is the server's Teacher core without its server (`in_process.InProcessTeacher`), in a process of
its own as the server is (`in_process.Worker`): built from the same config by the server's own code, under the
server's GIL switch interval, fed item by item as the door feeds it (the same checks, a queue slot and a task per
item, at most `stream_window` in flight, each result dropped once its item is done as the server drops it once sent),
so that the backend forms the same batches (their mean size is reported for both sides) and the difference is the
door alone: request decoding and conversion, the stream's machinery, result building and encoding, the transport and
the client. Each round starts a fresh server (Teacher only, as the baseline) and a fresh baseline process: on this
machine one process runs the same model work up to ~12% faster than another for as long as it lives (three
identical servers under the same interleaved load: 465, 500 and 520 µs/item, every round), so a single pair for all
rounds measured which process was the lucky one as well as the door. Its costs are split by CPU time: the server's
event loop (its main thread) against the baseline's, the server process as a whole, and the client process. And
beside it a gRPC floor (`grpc_floor`): a plain grpc.aio servicer with no proctor code, answering each item from the
request alone, through the same client: what gRPC and protobuf cost any Python server and client. Torch runs
`--torch-threads` intra-op threads on both sides (1 by default: with 2 on 2 cores, a core taken by the client or
another process stalls the model's thread barrier, and a 1-item forward went from ~1 ms to ~100 ms, which would
measure the neighbours rather than the door).

Writes bench/results/YYYY-MM-DD-cpu-overhead.{json,md}.
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
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import torch

from proctor.bench import grpc_floor, load
from proctor.bench.in_process import Worker, score_shapes
from proctor.bench.load import _rollout
from proctor.bench.server import cpu_seconds, histogram_totals, scrape, serve
from proctor.clients.reward import RewardClient, reward_request
from proctor.clients.teacher import TeacherClient, score_request
from proctor.engine.backends.builtin_models import resolve_model
from proctor.engine.backends.torch.classifier import TorchClassifier
from proctor.engine.config import CriticConfig
from proctor.engine.doors.grpc.convert import RELATIONS
from proctor.engine.skd.critic_scoring import CriticScorer
from proctor.v1 import critic_pb2, critic_pb2_grpc, teacher_pb2

RESULTS = Path(__file__).resolve().parent / "results"
CONFIG = """server: {port: 0, metrics_port: 0}
teacher: {model: builtin:tiny, device: cpu}
critic: {model: builtin:tiny-critic, device: cpu, cutoff: 0.5}
reward: {model: '', mode: rules, total_steps: 100000}
"""
# Score's server and baseline: the Teacher alone.
SCORE_CONFIG = """server: {port: 0, metrics_port: 0}
teacher: {model: builtin:tiny, device: cpu}
"""
SCORE_TOPS = (0, 20)  # top_logprobs: none, and what distillation trainers ask for
SCORE_PER_MESSAGE = 64  # ScoreBatched: TeacherClient.score's default
BATCH_SIZES = "proctor_batch_size_items"
US = 1e6
# The results file states the method: the docstring's paragraph on Score's baseline, as one line.
METHOD = " ".join(next(p for p in (__doc__ or "").split("\n\n") if p.startswith("Score's baseline")).split())


class Run(NamedTuple):
    """One variant's run, per item: wall time; CPU of the process that did the work (the server, or this process
    for the baseline) and of its event loop's thread; the client's CPU (0 in-process); the backend's batch size."""

    wall: float
    cpu: float
    loop_cpu: float
    client_cpu: float
    batch_items: float


class Measured:
    """A process doing the work, measured around one run: its CPU, its loop thread's, this process's, batches."""

    def __init__(self, pid: int, batches: Callable[[], tuple[float, float]], client: bool) -> None:
        self.pid, self.batches, self.client = pid, batches, client

    def run(self, work: Callable[[], None], items: int) -> Run:
        sum0, count0 = self.batches()
        cpu0, loop0, own0 = cpu_seconds(self.pid), cpu_seconds(self.pid, self.pid), time.process_time()
        t0 = time.perf_counter()
        work()
        wall = time.perf_counter() - t0
        cpu, loop, own = (
            cpu_seconds(self.pid) - cpu0,
            cpu_seconds(self.pid, self.pid) - loop0,
            time.process_time() - own0,
        )
        sum1, count1 = self.batches()
        mean = (sum1 - sum0) / (count1 - count0) if count1 > count0 else 0.0
        return Run(wall / items, cpu / items, loop / items, own / items if self.client else 0.0, mean)


def no_batches() -> tuple[float, float]:
    return 0.0, 0.0


def measure_score(folder: Path, score_items: int, rounds: int) -> dict[str, Any]:
    """Score without and with top-k: the baseline, the server per message and batched, the gRPC floor both ways;
    a fresh server and baseline process each round (the docstring says why)."""
    shapes = score_shapes(score_items)
    requests = {
        top: [score_request(f"s{i}", c, t, top_logprobs=top) for i, (c, t) in enumerate(shapes)] for top in SCORE_TOPS
    }
    runs: dict[int, dict[str, list[Run]]] = {top: {name: [] for name in VARIANTS} for top in SCORE_TOPS}
    floor_proc, floor_target = grpc_floor.start()
    floor = Measured(floor_proc.pid, no_batches, client=True)
    try:
        with TeacherClient(floor_target) as plain:
            for r in range(rounds):
                where = folder / f"score-round-{r}"
                where.mkdir()
                served = serve(where, SCORE_CONFIG)
                baseline = Worker(where / "proctor.yaml", score_items, SCORE_TOPS)
                try:
                    server = Measured(served.proc.pid, partial(server_batches, served.metrics), client=True)
                    base = Measured(baseline.proc.pid, partial(baseline.histogram_totals, BATCH_SIZES), client=False)
                    with TeacherClient(served.target) as proctor:
                        for top in SCORE_TOPS:
                            variants: dict[str, tuple[Measured, Callable[[], None]]] = {
                                "in_process": (base, partial(baseline.score, top)),
                                "grpc_per_message": (server, partial(over_grpc, proctor, requests[top], 0)),
                                "grpc_batched": (server, partial(over_grpc, proctor, requests[top], SCORE_PER_MESSAGE)),
                                "floor_per_message": (floor, partial(over_grpc, plain, requests[top], 0)),
                                "floor_batched": (floor, partial(over_grpc, plain, requests[top], SCORE_PER_MESSAGE)),
                            }
                            for name, run in interleaved(variants, score_items, backwards=r % 2 == 1).items():
                                runs[top][name].append(run)
                finally:
                    served.proc.terminate()
                    served.proc.wait()
                    baseline.close()
    finally:
        floor_proc.terminate()
        floor_proc.wait()
    report: dict[str, Any] = {"score_items": score_items, "score_tokens": "32 context + 32 target"}
    for top in SCORE_TOPS:
        report.update(score_report(f"score_top{top}_", runs[top]))
    return report


def server_batches(metrics_url: str) -> tuple[float, float]:
    return histogram_totals(scrape(metrics_url), BATCH_SIZES)


def over_grpc(client: TeacherClient, requests: list[teacher_pb2.ScoreRequest], per_message: int) -> None:
    out = client.score(requests, batch_size=per_message)
    assert len(out) == len(requests) and not any(r.HasField("error") for r in out.values())


def interleaved(
    variants: dict[str, tuple[Measured, Callable[[], None]]], items: int, backwards: bool
) -> dict[str, Run]:
    """Every variant once (after one warm-up run each), in turn forwards or backwards."""
    for _, work in variants.values():
        work()
    order = list(reversed(variants)) if backwards else list(variants)
    return {name: variants[name][0].run(variants[name][1], items) for name in order}


def score_report(prefix: str, runs: dict[str, list[Run]]) -> dict[str, Any]:
    base = runs["in_process"]

    def med(values: list[float]) -> float:
        return statistics.median(values) * US

    out: dict[str, Any] = {}
    for name, rs in runs.items():
        key = prefix + name
        out[f"{key}_us_per_item"] = med([r.wall for r in rs])
        if name.startswith("grpc"):
            # Paired by round: the machine's speed drifts between rounds, not within one.
            out[f"{key}_overhead_us_per_item"] = med([r.wall - b.wall for r, b in zip(rs, base, strict=True)])
            out[f"{key}_overhead_fraction"] = statistics.median(
                [r.wall / b.wall - 1 for r, b in zip(rs, base, strict=True)]
            )
            both = [(r.cpu + r.client_cpu) / b.cpu - 1 for r, b in zip(rs, base, strict=True)]
            out[f"{key}_cpu_overhead_fraction"] = statistics.median(both)
        out[f"{key}_cpu_us_per_item"] = med([r.cpu for r in rs])
        out[f"{key}_loop_cpu_us_per_item"] = med([r.loop_cpu for r in rs])
        if name != "in_process":
            out[f"{key}_client_cpu_us_per_item"] = med([r.client_cpu for r in rs])
        if not name.startswith("floor"):
            out[f"{key}_batch_items_mean"] = statistics.median([r.batch_items for r in rs])
    out[f"{prefix}wall_us_per_item_every_round"] = {n: [round(r.wall * US, 1) for r in rs] for n, rs in runs.items()}
    return out


def measure(items: int, score_items: int, rounds: int) -> dict[str, Any]:
    import random

    rng = random.Random(0)
    rollouts = [_rollout(rng) for _ in range(items)]
    full = [reward_request(f"r{i}", "Capital of France?", r, "Paris", 5) for i, r in enumerate(rollouts)]
    bare = [reward_request(f"r{i}", "Capital of France?", r, "Paris", 5, atoms="none") for i, r in enumerate(rollouts)]

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

    triples_direct = asyncio.run(direct_triples())
    wall: dict[str, list[float]] = {}
    server_cpu: dict[str, list[float]] = {}
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
        finally:
            proc.terminate()
            proc.wait()
        score = measure_score(Path(folder), score_items, rounds)
    median = {name: statistics.median(values) * US for name, values in wall.items()}
    cpu = {name: statistics.median(values) * US for name, values in server_cpu.items()}
    report: dict[str, Any] = {
        "device": "CPU",
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "command": "python -m proctor.bench.overhead " + " ".join(sys.argv[1:]),
        "rule_reward_items": items,
        "rounds": rounds,
        "rule_reward_in_process_us_per_item": median["in_process"],
    }
    for name in ("grpc_per_message", "grpc_batched", "grpc_batched_no_atoms"):
        report[f"rule_reward_{name}_us_per_item"] = median[name]
        # Paired by round: the machine's speed drifts between rounds, not within one.
        paired = [(v - a) * US for v, a in zip(wall[name], wall["in_process"], strict=True)]
        report[f"rule_reward_{name}_overhead_us_per_item"] = statistics.median(paired)
        report[f"rule_reward_{name}_items_per_s"] = US / median[name]
        report[f"rule_reward_{name}_server_cpu_us_per_item"] = cpu[name]
        report[f"rule_reward_{name}_items_per_server_core_s"] = US / cpu[name]
    report["rule_reward_wall_us_per_item_every_round"] = {n: [round(v * US, 1) for v in w] for n, w in wall.items()}
    report.update(
        {
            "critic_triples": len(triples),
            "critic_in_process_us_per_triple": triples_direct / len(triples) * US,
            "critic_grpc_batched_us_per_triple": triples_grpc / len(triples) * US,
            "critic_overhead_us_per_triple": (triples_grpc - triples_direct) / len(triples) * US,
            "critic_grpc_server_cpu_us_per_triple": triples_cpu / len(triples) * US,
        }
    )
    report.update(score)
    return report


VARIANTS = {
    "in_process": "in-process (the baseline)",
    "grpc_per_message": "gRPC, one item per message (Score)",
    "grpc_batched": f"gRPC, {SCORE_PER_MESSAGE} per message (ScoreBatched)",
    "floor_per_message": "gRPC floor, one per message",
    "floor_batched": f"gRPC floor, {SCORE_PER_MESSAGE} per message",
}


def score_lines(report: dict[str, Any]) -> list[str]:
    lines = [
        "## Score, tiny model",
        "",
        METHOD,
        "",
        "| top-k | variant | µs/item | vs in-process (paired) | CPU µs/item (server or baseline) | its event loop "
        "| client CPU | model batch (items) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for top in SCORE_TOPS:
        for name, label in VARIANTS.items():
            k = f"score_top{top}_{name}"
            vs = (
                f"{report[k + '_overhead_us_per_item']:+.0f} µs ({report[k + '_overhead_fraction']:+.0%}); "
                f"CPU {report[k + '_cpu_overhead_fraction']:+.0%}"
                if name.startswith("grpc")
                else ""
            )
            client = f"{report[k + '_client_cpu_us_per_item']:.0f}" if name != "in_process" else ""
            batch = f"{report[k + '_batch_items_mean']:.0f}" if not name.startswith("floor") else ""
            lines.append(
                f"| {top} | {label} | {report[k + '_us_per_item']:.0f} | {vs} | {report[k + '_cpu_us_per_item']:.0f} "
                f"| {report[k + '_loop_cpu_us_per_item']:.0f} | {client} | {batch} |"
            )
    lines += ["", "Where the door's CPU goes, per item (medians over rounds):", ""]
    for top in SCORE_TOPS:
        base = f"score_top{top}_in_process"
        for mode in ("per_message", "batched"):
            k, f = f"score_top{top}_grpc_{mode}", f"score_top{top}_floor_{mode}"
            baseline = report[base + "_cpu_us_per_item"]
            server = report[k + "_cpu_us_per_item"] - baseline
            loop = report[k + "_loop_cpu_us_per_item"] - report[base + "_loop_cpu_us_per_item"]
            client = report[k + "_client_cpu_us_per_item"]
            lines.append(
                f"- top-{top}, {mode.replace('_', ' ')}: {server + client:+.0f} µs over the baseline's {baseline:.0f}: "
                f"the server {server:+.0f} (its event loop {loop:+.0f}, its other threads {server - loop:+.0f}), "
                f"the client {client:.0f}; gRPC and protobuf alone (the floor) cost a server "
                f"{report[f + '_cpu_us_per_item']:.0f} and a client {report[f + '_client_cpu_us_per_item']:.0f}."
            )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=20000, help="rule-reward rollouts (a fifth as many critic triples)")
    p.add_argument("--score-items", type=int, default=2000, help="Score items per run")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of every variant")
    p.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads, here and in the server")
    args = p.parse_args()
    torch.set_num_threads(args.torch_threads)
    os.environ["OMP_NUM_THREADS"] = str(args.torch_threads)  # the server's torch, in the process serve() starts
    report = measure(args.items, args.score_items, args.rounds)
    for key, value in report.items():
        print(f"{key:>50}: {value:.2f}" if isinstance(value, float) else f"{key:>50}: {value}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"{dt.date.today().isoformat()}-cpu-overhead"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    lines = ["# Serving overhead: gRPC vs in-process, same run", "", f"Command: `{report['command']}`", "",
             "| | |", "|---|---|"] + [f"| {k} | {v:.2f} |" if isinstance(v, float) else f"| {k} | {v} |"
                                      for k, v in report.items() if not k.startswith("score_")]  # fmt: skip
    stem.with_suffix(".md").write_text("\n".join([*lines, "", *score_lines(report)]) + "\n")
    print(f"saved {stem}.{{json,md}}")


if __name__ == "__main__":
    main()
