"""Benchmark the scoring kernels against torch (and Liger-Kernel / cut-cross-entropy where they import).

    python -m proctor.bench.kernels                       # on a CUDA machine: the issue's shapes
    python -m proctor.bench.kernels --small --device cpu  # a smoke run of the harness (reference paths only)

For each case it prints and saves (bench/results/YYYY-MM-DD-<gpu>-kernels.{json,md,png}): median time over
repetitions (CUDA events), peak extra memory over the inputs, max abs error against float64 on a row sample, and
the fraction of the measured ceiling (one read of the inputs for memory-bound kernels, the lm_head GEMM alone for
the fused one), with the anchors measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from proctor.kernels import (
    expected_score,
    lm_head_logprobs,
    lm_head_logprobs_reference,
    target_logprobs,
    target_logprobs_reference,
    token_logprobs_reference,
)

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    case: str
    impl: str
    ms: float
    extra_gib: float
    max_err: float | None
    of_ceiling: float | None = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(fn: Callable[[], Any], device: torch.device, reps: int) -> tuple[float, float, Any]:
    """(median ms, peak extra GiB, last output)."""
    out = fn()  # warm-up (compiles Triton kernels)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            start.record()
            out = fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            out = fn()
            times.append((time.perf_counter() - t0) * 1e3)
    extra = (torch.cuda.max_memory_allocated() - base) / 2**30 if device.type == "cuda" else float("nan")
    return statistics.median(times), extra, out


def _err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.double() - ref.double()).abs().max())


def bench_logits(n: int, vocab: int, k: int, device: torch.device, reps: int, sample: int) -> list[Row]:
    case = f"logits->logprob+top{k} {n}x{vocab} bf16"
    logits = (torch.randn(n, vocab, device=device) * 3).to(torch.bfloat16)
    targets = torch.randint(0, vocab, (n,), device=device)
    rows = sample_rows(n, sample, device)
    ref = target_logprobs_reference(logits[rows].double(), targets[rows], top_k=k)
    out: list[Row] = []

    ms, extra, _ = measure(lambda: logits.sum(dtype=torch.float32), device, reps)  # one read: the ceiling
    read_ms = ms
    out.append(Row(case, "anchor: read the logits once", ms, extra, None, 1.0))
    ms, extra, got = measure(lambda: torch.log_softmax(logits.float(), -1).gather(1, targets[:, None]), device, reps)
    out.append(Row(case, "torch fp32 log_softmax+gather", ms, extra, _err(got[rows, 0], ref[0]), read_ms / ms))
    ms, extra, _ = measure(lambda: logits.topk(k, dim=-1), device, reps)
    out.append(Row(case, f"torch top-{k} alone", ms, extra, None, read_ms / ms))
    ms, extra, got = measure(lambda: target_logprobs(logits, targets, top_k=k), device, reps)
    err = _err(got[0][rows], ref[0])
    if k and ref[2] is not None:
        err = max(err, _err(got[2][rows], ref[2]))
    out.append(Row(case, f"proctor logprob+entropy+top-{k}, one pass", ms, extra, err, read_ms / ms))
    try:
        from liger_kernel.ops.utils import selective_log_softmax

        ms, extra, got = measure(lambda: selective_log_softmax(logits, targets), device, reps)
        out.append(
            Row(case, "Liger selective log-softmax (no top-k)", ms, extra, _err(got[rows], ref[0]), read_ms / ms)
        )
    except ImportError:
        pass
    return out


def bench_lm_head(n: int, vocab: int, hidden: int, device: torch.device, reps: int, sample: int) -> list[Row]:
    case = f"hidden->logprob {n}x{vocab}x{hidden} bf16"
    h = torch.randn(n, hidden, device=device).to(torch.bfloat16)
    w = (torch.randn(vocab, hidden, device=device) / hidden**0.5).to(torch.bfloat16)
    targets = torch.randint(0, vocab, (n,), device=device)
    rows = sample_rows(n, sample, device)
    ref = lm_head_logprobs_reference(h[rows].double(), w.double(), targets[rows])[0]
    out: list[Row] = []
    ms, extra, _ = measure(lambda: h @ w.T, device, reps)  # the GEMM alone: the ceiling
    gemm_ms = ms
    out.append(Row(case, "anchor: lm_head GEMM alone", ms, extra, None, 1.0))
    ms, extra, got = measure(lambda: lm_head_logprobs_reference(h, w, targets)[0], device, reps)
    out.append(Row(case, "torch chunked (1024 rows) fp32", ms, extra, _err(got[rows], ref), gemm_ms / ms))
    ms, extra, got = measure(lambda: lm_head_logprobs(h, w, targets)[0], device, reps)
    out.append(Row(case, "proctor fused lm_head", ms, extra, _err(got[rows], ref), gemm_ms / ms))
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        loss = LigerFusedLinearCrossEntropyLoss(reduction="none")
        ms, extra, got = measure(lambda: -loss(w, h, targets), device, reps)
        out.append(Row(case, "Liger fused linear CE", ms, extra, _err(got[rows], ref), gemm_ms / ms))
    except ImportError:
        pass
    try:
        from cut_cross_entropy import linear_cross_entropy

        ms, extra, got = measure(lambda: -linear_cross_entropy(h, w, targets, reduction="none"), device, reps)
        out.append(Row(case, "cut-cross-entropy", ms, extra, _err(got[rows], ref), gemm_ms / ms))
    except ImportError:
        pass
    return out


def bench_expected(rows_n: int, vocab: int, hidden: int, device: torch.device, reps: int) -> list[Row]:
    case = f"expected score {rows_n} rows, 10 tokens, V={vocab}, H={hidden} bf16"
    h = torch.randn(rows_n, hidden, device=device).to(torch.bfloat16)
    w = (torch.randn(vocab, hidden, device=device) / hidden**0.5).to(torch.bfloat16)
    ids = torch.arange(10, device=device) + 100
    values = torch.arange(10, device=device, dtype=torch.float32)
    ref = token_logprobs_reference(h.double(), w.double(), ids).exp()
    out: list[Row] = []
    ms, extra, _ = measure(lambda: w.sum(dtype=torch.float32), device, reps)
    read_ms = ms
    out.append(Row(case, "anchor: read the weight once", ms, extra, None, 1.0))
    ms, extra, got = measure(lambda: torch.softmax((h @ w.T).float(), -1)[:, ids], device, reps)
    out.append(Row(case, "torch softmax over full logits", ms, extra, _err(got, ref), read_ms / ms))
    ms, extra, got = measure(lambda: expected_score(h, w, ids, values)[0], device, reps)
    out.append(Row(case, "proctor expected score", ms, extra, _err(got, ref), read_ms / ms))
    return out


def sample_rows(n: int, sample: int, device: torch.device) -> torch.Tensor:
    return torch.linspace(0, n - 1, min(n, sample), device=device).long()


def device_tag(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower()
    found = re.search(r"(h100|h200|a100|l40s|l4|b200|a10g|4090)", name)
    return found.group(1) if found else re.sub(r"[^a-z0-9]+", "-", name).strip("-")


def report(rows: list[Row], device: torch.device, command: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    stem = RESULTS / f"{dt.date.today().isoformat()}-{device_tag(device)}-kernels"
    stem.with_suffix(".json").write_text(
        json.dumps({"device": gpu, "command": command, "rows": [asdict(r) for r in rows]}, indent=2)
    )
    lines = [f"# Scoring kernels on {gpu}", "", f"Command: `{command}`", ""]
    lines += ["| case | implementation | ms | extra GiB | max err vs fp64 | of ceiling |", "|---|---|---|---|---|---|"]
    for r in rows:
        err = f"{r.max_err:.1e}" if r.max_err is not None else "-"
        frac = f"{r.of_ceiling:.0%}" if r.of_ceiling is not None else "-"
        lines.append(f"| {r.case} | {r.impl} | {r.ms:.3f} | {r.extra_gib:.3f} | {err} | {frac} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1))
        ax.barh([f"{r.impl}\n{r.case}" for r in rows], [r.ms for r in rows])
        ax.set_xlabel(f"ms ({gpu})")
        ax.invert_yaxis()
        fig.tight_layout()
        fig.savefig(stem.with_suffix(".png"), dpi=120)
    except ImportError:
        print("matplotlib not installed: no PNG")
    return stem


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="small shapes (a smoke run of the harness)")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: these targets are GPU targets (use --device cpu --small for a smoke run)")
    if args.small:
        shapes = {"logits": (64, 4096, 20), "lm_head": (64, 4096, 256), "expected": (16, 4096, 256)}
    else:
        shapes = {"logits": (16384, 151_936, 20), "lm_head": (16384, 151_936, 4096), "expected": (256, 151_936, 4096)}
    rows = bench_logits(*shapes["logits"], device, args.reps, sample=64)
    rows += bench_lm_head(*shapes["lm_head"], device, args.reps, sample=32)
    rows += bench_expected(*shapes["expected"], device, args.reps)
    for r in rows:
        err = f"{r.max_err:.1e}" if r.max_err is not None else "-"
        print(f"{r.case:<52} {r.impl:<44} {r.ms:9.3f} ms  +{r.extra_gib:6.3f} GiB  err {err}")
    if not args.no_save:
        command = "python -m proctor.bench.kernels " + " ".join(argv if argv is not None else [])
        print(f"saved {report(rows, device, command.strip())}.{{json,md,png}}")


if __name__ == "__main__":
    main()
