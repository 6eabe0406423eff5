"""The kernels check's rows and its report: stem.json (the record) and stem.md (the table)."""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from proctor.bench import cost_model
from proctor.bench.kernels_compiled import Compiled, markdown

TOLERANCE = 1e-4  # max abs error vs float64, the issue's bar for every proctor kernel


@dataclass
class Row:
    case: str
    impl: str
    ms: float | None
    extra_gib: float | None
    max_err: float | None
    tolerance: float | None = None  # set on the rows the check gates (proctor's kernels)
    predicted_ms: float | None = None  # the cost model with its leads (bench/cost_model.py)
    predicted_measured_ms: float | None = None  # the cost model with the ceilings measured in this run
    note: str = ""

    @property
    def ok(self) -> bool:
        if self.tolerance is None:
            return True
        return self.max_err is not None and not math.isnan(self.max_err) and self.max_err <= self.tolerance


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def write_report(
    rows: list[Row],
    stem: Path,
    device: torch.device,
    command: str,
    rehearsal: bool,
    measured: cost_model.Ceilings | None = None,
    compiled: list[Compiled] | None = None,
) -> bool:
    """Writes stem.json and stem.md; returns whether every gated row passed and no compiled variant spills."""
    passed = all(r.ok for r in rows) and not any(c.problem for c in compiled or [])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    stem.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "device": name,
        "date": dt.date.today().isoformat(),
        "command": command,
        "rehearsal": rehearsal,
        "tolerance": TOLERANCE,
        "passed": passed,
        "ceilings_measured": asdict(measured) if measured else None,
        "ceilings_leads": asdict(cost_model.H200),
        "rows": [asdict(r) | {"ok": r.ok} for r in rows],
        "compiled": [asdict(c) | {"problem": c.problem} for c in compiled or []],
    }
    stem.with_name(stem.name + ".json").write_text(json.dumps(record, indent=2) + "\n")
    what = "rehearsal (tiny shapes, Triton interpreter, CPU: times are not GPU figures)" if rehearsal else name
    lines = [
        f"# Scoring kernels check: {what}",
        "",
        f"Command: `{command}` ({record['date']}). Max abs error vs float64 on sampled rows; proctor's rows must be",
        f"<= {TOLERANCE:g}. Verdict: **{'passed' if passed else 'FAILED'}**.",
        "",
        *(
            [
                f"Ceilings measured in this run: bf16 GEMM {measured.gemm_flops / 1e12:.0f} TFLOP/s, copy "
                f"{measured.hbm_bps / 1e12:.2f} TB/s, L2 reads >= {measured.l2_bps / 1e12:.1f} TB/s (the cost model's "
                "leads: 790, 4.3, 10).",
                "",
            ]
            if measured
            else []
        ),
        "| case | implementation | ms | predicted ms (leads) | predicted ms (measured ceilings) | extra GiB | max err "
        "| check |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        verdict = r.note or ("-" if r.tolerance is None else "ok" if r.ok else "FAIL")
        lines.append(
            f"| {r.case} | {r.impl} | {fmt(r.ms, '.3f')} | {fmt(r.predicted_ms, '.3f')} | "
            f"{fmt(r.predicted_measured_ms, '.3f')} | "
            f"{fmt(r.extra_gib, '.3f')} | {fmt(r.max_err, '.1e')} | {verdict} |"
        )
    if compiled:
        lines += ["", *markdown(compiled)]
    stem.with_name(stem.name + ".md").write_text("\n".join(lines) + "\n")
    return passed
