"""What a phase of gpu-check is handed: its work folder (shared by the phases of one run), its scale, its log, and
the ceilings the `env` phase measured."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from proctor.bench.gpu_check.report import PhaseLog, read_record
from proctor.bench.gpu_check.scale import Scale


@dataclass
class PhaseContext:
    workdir: Path
    scale: Scale
    log: PhaseLog

    @property
    def models(self) -> Path:
        return self.workdir / "models"

    def matmul_share(self, flops_per_s: float) -> float | None:
        """A rate of model arithmetic as a share of the matrix rate measured by `env` (None if it did not run)."""
        env = read_record(self.workdir, "env")
        ceilings = env.data.get("ceilings") if env is not None else None
        if not ceilings:
            return None
        return float(flops_per_s / (ceilings["matmul_tflops"] * 1e12))

    def matmul_ceiling(self) -> str:
        return f"the measured {self.scale.dtype} matrix rate"
