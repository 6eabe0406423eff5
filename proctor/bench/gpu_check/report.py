"""What a gpu-check phase records (checks, figures, data), written to disk after every record, and the report.

A phase runs in its own process; its record file (`phase-<name>.json` in the work folder) is rewritten whole after
each check or figure, so that what a phase found survives it being killed at its budget. The report gathers every
phase's record into `<date>-<gpu>-gpu-check.{json,md}`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# A phase's outcome in the report.
PASS, FAIL, OUT_OF_TIME, SKIPPED = "pass", "fail", "out of time", "skipped"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Figure:
    """One measured figure, beside the anchor measured in the same run and its share of the measured ceiling."""

    name: str
    value: float
    unit: str
    target: float | None = None  # the bar; None: reported, not judged
    higher_is_better: bool = True
    anchor: str = ""  # what the anchor is
    anchor_value: float | None = None  # in `unit`
    of_ceiling: float | None = None  # value as a share of the measured ceiling (see `ceiling`)
    ceiling: str = ""  # which ceiling, and how the figure was turned into its unit
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.value >= self.target if self.higher_is_better else self.value <= self.target


@dataclass
class PhaseRecord:
    phase: str
    checks: list[Check] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    finished: bool = False  # the phase reached its end (a killed phase leaves False)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for figure, raw in zip(self.figures, out["figures"], strict=True):
            raw["met"] = figure.met
        return out

    @staticmethod
    def from_json(raw: dict[str, Any]) -> PhaseRecord:
        figures = [Figure(**{k: v for k, v in f.items() if k != "met"}) for f in raw.get("figures", [])]
        return PhaseRecord(
            phase=raw["phase"],
            checks=[Check(**c) for c in raw.get("checks", [])],
            figures=figures,
            data=raw.get("data", {}),
            finished=raw.get("finished", False),
        )


def record_path(workdir: Path, phase: str) -> Path:
    return workdir / f"phase-{phase}.json"


def write_json(path: Path, value: Any) -> None:
    """Whole or not at all: a reader (or a kill) never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str))
    os.replace(tmp, path)


class PhaseLog:
    """A phase's record, saved after every entry and echoed on stdout (a remote runner may return only the end)."""

    def __init__(self, workdir: Path, phase: str) -> None:
        self.record = PhaseRecord(phase)
        self.path = record_path(workdir, phase)
        self._save()

    def _save(self) -> None:
        write_json(self.path, self.record.to_json())

    def check(self, name: str, ok: bool, detail: str) -> bool:
        self.record.checks.append(Check(name, bool(ok), detail))
        print(f"[{self.record.phase}] {'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
        self._save()
        return bool(ok)

    def figure(self, figure: Figure) -> Figure:
        self.record.figures.append(figure)
        anchor = f" (anchor: {figure.anchor} {figure.anchor_value:.4g})" if figure.anchor_value is not None else ""
        share = f", {figure.of_ceiling:.0%} of {figure.ceiling}" if figure.of_ceiling is not None else ""
        bar = "" if figure.met is None else (" meets" if figure.met else " MISSES") + f" the bar {figure.target:g}"
        print(f"[{self.record.phase}] {figure.name}: {figure.value:.4g} {figure.unit}{anchor}{share}{bar}", flush=True)
        self._save()
        return figure

    def data(self, **values: Any) -> None:
        self.record.data.update(values)
        self._save()

    def finish(self) -> None:
        self.record.finished = True
        self._save()


def read_record(workdir: Path, phase: str) -> PhaseRecord | None:
    path = record_path(workdir, phase)
    if not path.exists():
        return None
    return PhaseRecord.from_json(json.loads(path.read_text()))


@dataclass
class PhaseResult:
    """A phase as the report shows it: its outcome under its budget, and what it recorded."""

    name: str
    what: str
    budget_s: float
    elapsed_s: float
    status: str  # PASS, FAIL, OUT_OF_TIME or SKIPPED
    reason: str  # why not PASS ("" when it passed)
    record: PhaseRecord | None
    log_tail: str = ""  # the end of its output when it did not pass

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "record"}
        out["record"] = self.record.to_json() if self.record is not None else None
        return out


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.4g}"


def markdown(summary: dict[str, Any], phases: list[PhaseResult]) -> str:
    lines = [
        f"# gpu-check on {summary['device']}" + (" (CPU rehearsal: tiny shapes, interpreted kernels)"
                                                 if summary["rehearse"] else ""),
        "",
        f"Command: `{summary['command']}`  ",
        f"Date: {summary['date']}; whole run {summary['elapsed_s']:.0f} s of a {summary['budget_s']:.0f} s budget.",
        "",
        "| phase | what | status | seconds (budget) | why not pass |",
        "|---|---|---|---|---|",
    ]  # fmt: skip
    for p in phases:
        lines.append(f"| {p.name} | {p.what} | {p.status} | {p.elapsed_s:.1f} ({p.budget_s:.0f}) | {p.reason or '-'} |")
    figures = [(p.name, f) for p in phases if p.record for f in p.record.figures]
    if figures:
        lines += ["", "## Figures", "",
                  "| phase | figure | value | unit | bar | met | anchor (same run) | anchor value | of ceiling |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, f in figures:
            bar = "-" if f.target is None else ("≥ " if f.higher_is_better else "≤ ") + _number(f.target)
            met = "-" if f.met is None else ("yes" if f.met else "**no**")
            share = "-" if f.of_ceiling is None else f"{f.of_ceiling:.1%} ({f.ceiling})"
            lines.append(
                f"| {name} | {f.name} | {_number(f.value)} | {f.unit} | {bar} | {met} | {f.anchor or '-'} "
                f"| {_number(f.anchor_value)} | {share} |"
            )
    for p in phases:
        if p.record is None or not p.record.checks:
            continue
        lines += ["", f"## {p.name}: checks", "", "| check | result | detail |", "|---|---|---|"]
        for c in p.record.checks:
            lines.append(f"| {c.name} | {'pass' if c.ok else '**FAIL**'} | {c.detail} |")
    notes = [(p.name, f) for p in phases if p.record for f in p.record.figures if f.note]
    if notes:
        lines += ["", "## Notes on the figures", ""] + [f"- {name}, {f.name}: {f.note}" for name, f in notes]
    for p in phases:
        if p.log_tail:
            lines += ["", f"## {p.name}: end of its output", "", "```", p.log_tail.rstrip(), "```"]
    return "\n".join(lines) + "\n"
