"""`proctor bench`: a load generator over gRPC for each service, closed or open loop.

    proctor bench --workload grpo --mode closed --concurrency 1,4,16           # own server, tiny models
    proctor bench --workload score --target gpu-host:50051 --mode open --rate 50,200,800
    proctor bench --workload skd --items 5000 --per-message 0                  # one item per message

Workloads (realistic shapes, random content):
  skd    Critic of SKD triples (short sentence pairs)
  grpo   RewardModel of GRPO steps: 256 prompts x 16 rollouts with multi-turn atoms, sent step by step, asking for
         no atoms back (`--atoms`), as the trainer adapters do
  score  Teacher.Score of on-policy distillation sequences of 1-8k tokens (capped at the model's context)
Closed loop: C streams each keep a round of items in flight (a GRPO step for grpo), sent as the client library
sends them: `--per-message` items per message on the services' *Batched RPCs (0 = the plain RPC, one per message).
Open loop: Poisson arrivals at a rate, one item per message on one stream. Requests are made before the clock
starts. Without --target a `proctor serve` with the tiny models runs as its own process, and its CPU time per
item is reported too. Reports items/s, tokens/s, latency p50/p90/p99 and errors by code per level, with a progress
bar; writes bench/results/YYYY-MM-DD-<device>-bench-<workload>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from tqdm import tqdm

from proctor.bench.server import cpu_seconds, histogram_totals, peak_in, scrape, serve
from proctor.clients.reward import ATOM_DETAILS
from proctor.clients.streaming import CODE_NAMES
from proctor.engine.cli import Command
from proctor.engine.doors.grpc.reward import rollout_input
from proctor.engine.rewards.pipeline import RewardScorer, RewardSettings
from proctor.engine.skd import prompts as skd
from proctor.v1 import (
    common_pb2,
    critic_pb2,
    critic_pb2_grpc,
    reward_pb2,
    reward_pb2_grpc,
    teacher_pb2,
    teacher_pb2_grpc,
)

RESULTS = Path(__file__).resolve().parent / "results"
_TAILS = ["to go home", "tired", "to help", "gets wet", "happy", "to buy food", "it rains", "kind", "the the the"]
_ATOMS = ["PLAN", "OBSERVATION", "HYPOTHESIS_TESTING", "VERIFICATION", "REFLECTION", "RISK_ANALYSIS"]


@dataclass
class Workload:
    name: str
    stub: Callable[[grpc.aio.Channel], Any]
    rpc: str
    make: Callable[[random.Random, int], Any]  # (rng, index) -> request
    tokens: Callable[[Any], int]  # tokens an answered request accounts for
    step: int = 1  # closed loop: items per stream round (a GRPO step for grpo)
    batched_rpc: str = ""  # the many-items-per-message twin of rpc, where the service has one
    batch: Callable[..., Any] | None = None  # its request message: batch(items=[...])
    # The anchor: the same requests' work called in-process, where that needs no model (rule rewards).
    in_process: Callable[[list[Any]], None] | None = None


def _rollout(rng: random.Random) -> str:
    turns = []
    for turn in range(rng.randint(2, 6)):
        atoms = "".join(
            f"<{k}>{' '.join(rng.choice(_TAILS) for _ in range(rng.randint(20, 60)))}</{k}>"
            for k in rng.sample(_ATOMS, rng.randint(1, 3))
        )
        turns.append(f'<think>{atoms}</think><tool_call>{{"query": "step {turn}"}}</tool_call>')
        turns.append(f"<tool_response>{' '.join(rng.choice(_TAILS) for _ in range(80))}</tool_response>")
    return "".join(turns) + f"<think><VERIFICATION>done</VERIFICATION></think><answer>{rng.choice(_TAILS)}</answer>"


def workloads(max_len: int, atoms: str = "none") -> dict[str, Workload]:
    def classify(rng: random.Random, i: int) -> critic_pb2.ClassifyRequest:
        head = rng.choice(skd.seed_events())
        relation = common_pb2.Relation.ValueType(rng.randint(1, 7))
        return critic_pb2.ClassifyRequest(
            id=str(i), triple=critic_pb2.Triple(head=head, relation=relation, tail=rng.choice(_TAILS))
        )

    def reward(rng: random.Random, i: int) -> reward_pb2.RewardRequest:
        return reward_pb2.RewardRequest(
            id=str(i), question="Which city is the capital of France?", response=_rollout(rng),
            gold_answers=["Paris<|answer_split|>paris, france"], training_step=i // 4096, total_steps=10_000,
            atom_detail=ATOM_DETAILS[atoms],
        )  # fmt: skip

    def score(rng: random.Random, i: int) -> teacher_pb2.ScoreRequest:
        total = min(rng.randint(1024, 8192), max_len)
        context = rng.randint(1, total // 2)
        ids = [rng.randint(3, 400) for _ in range(total)]
        return teacher_pb2.ScoreRequest(
            id=str(i),
            context=common_pb2.Prompt(token_ids=common_pb2.TokenIds(ids=ids[:context])),
            target=common_pb2.Prompt(token_ids=common_pb2.TokenIds(ids=ids[context:])),
        )

    return {
        "skd": Workload("skd", critic_pb2_grpc.CriticStub, "Classify", classify, lambda r: 0, step=256,
                        batched_rpc="ClassifyBatched", batch=critic_pb2.ClassifyBatch),
        "grpo": Workload("grpo", reward_pb2_grpc.RewardModelStub, "Reward", reward, lambda r: 0, step=4096,
                         batched_rpc="RewardBatched", batch=reward_pb2.RewardBatch, in_process=rule_rewards),
        "score": Workload("score", teacher_pb2_grpc.TeacherStub, "Score", score, lambda r: len(r.logprobs)),
    }  # fmt: skip


def rule_rewards(requests: list[reward_pb2.RewardRequest], total_steps: int = 0) -> None:
    """The requests' rule rewards computed in-process, from request to outcome as the server does (the anchor)."""
    scorer = RewardScorer(RewardSettings(mode="rules", total_steps=total_steps), None)
    for r in requests:
        scorer.apply_rules(rollout_input(r))


@dataclass
class Level:
    mode: str
    level: float  # concurrency or rate
    items: int
    seconds: float
    items_per_s: float
    tokens_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: dict[str, int] = field(default_factory=dict)
    server_cpu_us_per_item: float | None = None  # when the server is this command's own process
    gpu_memory_peak_gib: float | None = None  # the server's, since it started (its /metrics, on CUDA)
    batch_items_mean: float | None = None  # the server's model batches during the level (its /metrics)
    batch_padding_mean: float | None = None  # their mean share of padded token slots
    in_process_us_per_item: float | None = None  # the anchor, same requests, same run


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Recorder:
    def __init__(self, bar: tqdm) -> None:  # type: ignore[type-arg]
        self.latencies: list[float] = []
        self.codes: Counter[str] = Counter()
        self.tokens = 0
        self.bar = bar

    def record(self, result: Any, sent: float, work: Workload) -> None:
        self.latencies.append(time.perf_counter() - sent)
        if result.HasField("error"):
            self.codes[CODE_NAMES.get(result.error.code, str(result.error.code))] += 1
        else:
            self.tokens += work.tokens(result)
        self.bar.update(1)


async def closed_loop(
    channel: grpc.aio.Channel, work: Workload, concurrency: int, requests: list[Any], per_message: int, rec: Recorder
) -> None:
    stub = work.stub(channel)
    rounds = iter(range(0, len(requests), work.step))  # shared by the streams: each takes the next round

    async def worker() -> None:
        for start in rounds:
            batch = requests[start : start + work.step]
            sent = time.perf_counter()
            if per_message and work.batch is not None:
                messages = [work.batch(items=batch[i : i + per_message]) for i in range(0, len(batch), per_message)]
                async for reply in getattr(stub, work.batched_rpc)(iter(messages)):
                    for result in reply.items:
                        rec.record(result, sent, work)
            else:
                async for result in getattr(stub, work.rpc)(iter(batch)):
                    rec.record(result, sent, work)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def open_loop(channel: grpc.aio.Channel, work: Workload, rate: float, requests: list[Any], rec: Recorder) -> None:
    rng = random.Random(int(rate))
    sent: dict[str, float] = {}

    async def arrivals() -> AsyncIterator[Any]:
        for request in requests:
            await asyncio.sleep(rng.expovariate(rate))
            sent[request.id] = time.perf_counter()
            yield request

    async for result in getattr(work.stub(channel), work.rpc)(arrivals()):
        rec.record(result, sent[result.id], work)


async def run_levels(
    target: str,
    work: Workload,
    mode: str,
    levels: list[float],
    items: int,
    per_message: int = 0,
    server_pid: int | None = None,
    metrics_url: str = "",
) -> list[Level]:
    out = []
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        for level in levels:
            before = scrape(metrics_url) if metrics_url else ""
            rng = random.Random(int(level))
            requests = [work.make(rng, i) for i in range(items)]
            anchor = None
            if work.in_process is not None:
                t0 = time.perf_counter()
                work.in_process(requests)
                anchor = (time.perf_counter() - t0) / items * 1e6
            with tqdm(total=items, desc=f"{work.name} {mode} {level:g}", unit="item", leave=False) as bar:
                rec = Recorder(bar)
                cpu0 = cpu_seconds(server_pid) if server_pid else 0.0
                t0 = time.perf_counter()
                if mode == "closed":
                    await closed_loop(channel, work, int(level), requests, per_message, rec)
                else:
                    await open_loop(channel, work, level, requests, rec)
                seconds = time.perf_counter() - t0
                server_cpu = (cpu_seconds(server_pid) - cpu0) / items * 1e6 if server_pid else None
            after = scrape(metrics_url) if metrics_url else ""
            peak = peak_in(after)
            batches = {
                name: [
                    b - a for a, b in zip(histogram_totals(before, name), histogram_totals(after, name), strict=True)
                ]
                for name in ("proctor_batch_size_items", "proctor_batch_padding_ratio")
            }
            items_mean, padding_mean = (total / count if count else None for total, count in batches.values())
            ms = [x * 1e3 for x in rec.latencies]
            out.append(
                Level(
                    mode,
                    level,
                    len(ms),
                    seconds,
                    len(ms) / seconds,
                    rec.tokens / seconds,
                    _percentile(ms, 0.5),
                    _percentile(ms, 0.9),
                    _percentile(ms, 0.99),
                    dict(rec.codes),
                    server_cpu_us_per_item=server_cpu,
                    gpu_memory_peak_gib=None if peak is None else peak / 2**30,
                    batch_items_mean=items_mean,
                    batch_padding_mean=padding_mean,
                    in_process_us_per_item=anchor,
                )
            )
            cpu = f", server CPU {server_cpu:.0f} us/item" if server_cpu is not None else ""
            cpu += f", in-process {anchor:.0f} us/item" if anchor is not None else ""
            cpu += f", GPU memory peak {peak / 2**30:.2f} GiB" if peak is not None else ""
            if items_mean is not None and padding_mean is not None:
                cpu += f", batches of {items_mean:.0f} items with {padding_mean:.0%} padding"
            print(
                f"{work.name} {mode} {level:g}: {out[-1].items_per_s:.1f} items/s, {out[-1].tokens_per_s:.0f} tok/s, "
                f"p50 {out[-1].p50_ms:.1f} ms, p99 {out[-1].p99_ms:.1f} ms{cpu}, errors {dict(rec.codes) or 0}",
                flush=True,
            )
    return out


# Without --target: the tiny models (device auto), rule-only rewards; /metrics on a free port.
OWN_SERVER_CONFIG = """server: {port: 0, metrics_port: 0}
teacher: {model: builtin:tiny}
critic: {model: builtin:tiny-critic, cutoff: 0.5}
reward: {model: '', mode: rules, total_steps: 10000}
"""


def report(work: str, target: str, levels: list[Level], device: str, command: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"{dt.date.today().isoformat()}-{device}-bench-{work}"
    stem.with_suffix(".json").write_text(
        json.dumps(
            {
                "workload": work,
                "target": target,
                "device": device,
                "command": command,
                "levels": [asdict(x) for x in levels],
            },
            indent=2,
        )
    )
    lines = [f"# proctor bench: {work} on {device}", "", f"Command: `{command}`", "",
             "| mode | level | items | items/s | tokens/s | p50 ms | p90 ms | p99 ms | server CPU µs/item "
             "| in-process µs/item (anchor) | GPU memory peak GiB | items/batch | padding | errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip

    def us(value: float | None, form: str = ".0f") -> str:
        return "-" if value is None else format(value, form)

    for x in levels:
        lines.append(
            f"| {x.mode} | {x.level:g} | {x.items} | {x.items_per_s:.1f} | {x.tokens_per_s:.0f} | {x.p50_ms:.1f} | "
            f"{x.p90_ms:.1f} | {x.p99_ms:.1f} | {us(x.server_cpu_us_per_item)} | {us(x.in_process_us_per_item)} "
            f"| {us(x.gpu_memory_peak_gib, '.2f')} | {us(x.batch_items_mean, '.1f')} "
            f"| {us(x.batch_padding_mean, '.1%')} | {x.errors or '-'} |"
        )
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([x.items_per_s for x in levels], [x.p50_ms for x in levels], "o-", label="p50")
        ax.plot([x.items_per_s for x in levels], [x.p99_ms for x in levels], "s--", label="p99")
        ax.set_xlabel("items/s")
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"{work} on {device}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(stem.with_suffix(".png"), dpi=120)
    except ImportError:
        print("matplotlib not installed (pip install matplotlib): no PNG")
    return stem


def _device_tag() -> str:
    import torch

    from proctor.bench.kernels_timing import device_tag

    return device_tag(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workload", choices=["skd", "grpo", "score"], default="grpo")
    p.add_argument("--target", help="host:port of a running server; default: its own one with the tiny models")
    p.add_argument("--metrics", default="", help="with --target: its /metrics URL, for the GPU memory peak")
    p.add_argument("--mode", choices=["closed", "open"], default="closed")
    p.add_argument("--concurrency", default="1,4", help="closed loop: comma-separated levels [1,4]")
    p.add_argument("--rate", default="50,200", help="open loop: items/s levels [50,200]")
    p.add_argument("--items", type=int, default=2000, help="items per level [2000]")
    p.add_argument("--per-message", type=int, default=256, help="closed loop, skd and grpo: items per message [256]")
    p.add_argument("--atoms", choices=sorted(ATOM_DETAILS), default="none", help="grpo: atoms in results [none]")
    p.add_argument("--no-save", action="store_true")


def run(args: argparse.Namespace) -> int:
    levels = [float(x) for x in (args.concurrency if args.mode == "closed" else args.rate).split(",")]

    @contextlib.contextmanager
    def server() -> Iterator[tuple[str, int | None, str]]:
        if args.target:
            yield args.target, None, args.metrics
            return
        with tempfile.TemporaryDirectory() as folder:
            proc, target, metrics = serve(Path(folder), OWN_SERVER_CONFIG)
            try:
                yield target, proc.pid, metrics
            finally:
                proc.terminate()
                proc.wait()

    with server() as (target, pid, metrics):
        max_len = 2048
        if args.workload == "score":
            with grpc.insecure_channel(target) as channel:
                max_len = teacher_pb2_grpc.TeacherStub(channel).Info(common_pb2.InfoRequest()).max_model_len
        work = workloads(max_len, args.atoms)[args.workload]
        results = asyncio.run(run_levels(target, work, args.mode, levels, args.items, args.per_message, pid, metrics))
    if not args.no_save:
        command = "proctor bench " + " ".join(sys.argv[2:])
        stem = report(args.workload, args.target or "own process (tiny models)", results, _device_tag(), command)
        print("saved " + ", ".join(str(p) for p in sorted(stem.parent.glob(stem.name + ".*"))))
    return 0


COMMAND = Command(
    help="load generator over gRPC (closed / open loop) for each service",
    description="Drive a server (or an embedded one with the tiny models) with realistic workloads and report "
    "throughput, latency percentiles and errors; results in bench/results/.",
    add_arguments=add_arguments,
    run=run,
)
