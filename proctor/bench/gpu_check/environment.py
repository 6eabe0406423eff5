"""Phase `env`: what the machine is (GPU, driver, versions) and its two ceilings, measured here and now.

Every later figure is divided by one of them: the copy bandwidth (a device-to-device copy, bytes read plus bytes
written) for memory-bound work, the matrix rate (an n x n x n product on random data, in the bars' dtype) for
model forwards. Medians of timed repetitions after warm-ups, with device events on a GPU (METHOD.md).
"""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
import statistics
import subprocess
from collections.abc import Callable

import torch

from proctor.bench.gpu_check.context import PhaseContext
from proctor.bench.gpu_check.report import Figure
from proctor.bench.gpu_wheels import image_packages, unmet_here
from proctor.bench.kernels_timing import call_ms, device_tag

# The versions the report names (the rest of the machine: image_drift and the requirements check).
PACKAGES = ("torch", "triton", "transformers", "tokenizers", "grpcio", "protobuf", "fastapi", "numpy")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _median_ms(fn: Callable[[], object], device: torch.device, warmup: int = 3, reps: int = 20) -> float:
    for _ in range(warmup):
        fn()
    return float(statistics.median(call_ms(fn, device) for _ in range(reps)))


def _driver() -> str:
    if shutil.which("nvidia-smi") is None:
        return "no nvidia-smi"
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unreadable"


def _copy_gb_s(mib: int, device: torch.device) -> float:
    src = torch.randn(mib * 2**20 // 4, device=device)  # random, never zeros (METHOD.md)
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src), device)
    return 2 * src.numel() * 4 / (ms / 1e3) / 1e9


def _matmul_tflops(n: int, dtype: torch.dtype, device: torch.device) -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    ms = _median_ms(lambda: a @ b, device)
    return 2 * n**3 / (ms / 1e3) / 1e12


def run(ctx: PhaseContext) -> None:
    s = ctx.scale
    versions = {"python": platform.python_version(), **{p: _version(p) for p in PACKAGES}}
    versions["torch.cuda"] = str(torch.version.cuda)
    ctx.log.data(versions=versions)
    unmet = unmet_here()
    ctx.log.check("requirements", not unmet, "proctor's run-time requirements met, theirs too" if not unmet else
                  "unmet (bench/gpu_wheels.sh carries what the image lacks): " + "; ".join(unmet))  # fmt: skip
    drift = {
        name: f"{version} here, {listed} listed"
        for name, listed in image_packages().items()
        if listed is not None and (version := _version(name)) != str(listed)
    }
    ctx.log.data(image_drift=drift)  # on a GPU: where bench/gpu_image_packages.txt needs updating
    if s.device == "cuda":
        if not ctx.log.check("CUDA", torch.cuda.is_available(), f"torch {torch.__version__} sees CUDA"):
            return
        props = torch.cuda.get_device_properties(0)
        gpu = {
            "name": props.name,
            "count": torch.cuda.device_count(),
            "memory_gib": props.total_memory / 2**30,
            "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "driver": _driver(),
            "tag": device_tag(torch.device("cuda")),  # names the report
        }
    else:
        gpu = {"name": "CPU", "count": 0, "threads": torch.get_num_threads()}
    ctx.log.data(gpu=gpu)
    ctx.log.check("device", True, ", ".join(f"{k} {v}" for k, v in gpu.items()))

    device = torch.device(s.device)
    copy_gb_s, tflops = _copy_gb_s(s.copy_mib, device), _matmul_tflops(s.gemm_n, getattr(torch, s.dtype), device)
    ctx.log.data(ceilings={"copy_gb_s": copy_gb_s, "matmul_tflops": tflops, "matmul_dtype": s.dtype})
    copy = f"copy of {s.copy_mib} MiB, read + written"
    ctx.log.figure(Figure("copy bandwidth (ceiling)", copy_gb_s, "GB/s", note=copy))
    gemm = f"{s.gemm_n}^3 {s.dtype} product on random data"
    ctx.log.figure(Figure(f"{s.dtype} matrix rate (ceiling)", tflops, "TFLOP/s", note=gemm))
