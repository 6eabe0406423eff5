"""How the kernels check times a call (median of CUDA events, peak extra memory) and measures the cost model's
three ceilings in the same run; the GPU's short name for report file names."""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from proctor.bench import cost_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def call_ms(fn: Callable[[], object], device: torch.device) -> float:
    """One call's time in ms: between two CUDA events on a GPU (the call's device work), the wall clock elsewhere."""
    if device.type != "cuda":
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
    end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return float(start.elapsed_time(end))


def measure(fn: Callable[[], Any], device: torch.device, reps: int) -> tuple[float, float | None, Any]:
    """(median ms, peak extra GiB over what was allocated before, first output). The first call warms up (Triton
    compiles there) and its output is the one checked."""
    first = fn()
    _sync(device)
    if device.type == "cuda":
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    times = [call_ms(fn, device) for _ in range(reps)]
    extra = (torch.cuda.max_memory_allocated() - base) / 2**30 if device.type == "cuda" else None
    return statistics.median(times), extra, first


def device_tag(device: torch.device) -> str:
    """The GPU's short name for file names (h200, h100, ...); "cpu" off CUDA."""
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower()
    found = re.search(r"(h100|h200|a100|l40s|l4|b200|a10g|4090)", name)
    return found.group(1) if found else re.sub(r"[^a-z0-9]+", "-", name).strip("-")


def measure_ceilings(
    device: torch.device, reps: int, copy_bytes: int = 2**30, gemm_n: int = 8192, l2_bytes: int = 24 * 2**20
) -> cost_model.Ceilings:
    """The cost model's three rates, measured in this run: a 1 GiB device copy (bytes read + written), a bf16
    8192^3 matmul, and L2 reads (a torch sum over a 24 MiB buffer expanded 64 times: one kernel re-reading
    L2-resident data; torch's reduction makes it a lower bound)."""
    src = torch.randn(copy_bytes // 2, device=device).to(torch.bfloat16)
    dst = torch.empty_like(src)
    copy_ms = measure(lambda: dst.copy_(src), device, reps)[0]
    a, b = (torch.randn(gemm_n, gemm_n, device=device).to(torch.bfloat16) for _ in range(2))
    gemm_ms = measure(lambda: a @ b, device, reps)[0]
    again = torch.randn(l2_bytes // 4, device=device).view(1, -1).expand(64, -1)
    l2_ms = measure(lambda: again.sum(), device, reps)[0]
    return cost_model.Ceilings(
        gemm_flops=2 * gemm_n**3 / (gemm_ms / 1e3),
        hbm_bps=2 * copy_bytes / (copy_ms / 1e3),
        l2_bps=64 * l2_bytes / (l2_ms / 1e3),
    )
