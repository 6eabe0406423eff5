"""The gpu-check command: its phases in order, each in its own process under its own time budget.

A phase that fails or runs out of time is reported and the next one runs; the report is rewritten after every
phase, so it is there even if the whole command is cut short. A phase past its budget is ended with its whole
process group (the servers it started included), and what it had recorded is kept (report.py).
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from proctor.bench import gpu_check
from proctor.bench.gpu_check.report import (
    FAIL,
    OUT_OF_TIME,
    PASS,
    SKIPPED,
    Check,
    PhaseLog,
    PhaseRecord,
    PhaseResult,
    markdown,
    read_record,
    write_json,
)
from proctor.bench.gpu_check.scale import scale
from proctor.engine.cli import Command

RESULTS = Path(__file__).resolve().parent.parent / "results"
TOTAL_BUDGET_S = 480.0  # the issue: the whole check in <= 8 minutes on one H200
REHEARSAL_BUDGET_S = 420.0  # 2 CPU cores; a CI run takes far less (tests/bench/test_gpu_check.py)
LEAST_S = 5.0  # a phase left less than this is not started


@dataclass(frozen=True)
class Phase:
    name: str
    what: str
    budget_s: float  # on one H200 (how each was estimated: bench/README.md, "On a GPU machine")
    rehearse_budget_s: float  # on 2 CPU cores


# The H200 budgets add up to TOTAL_BUDGET_S: even a run whose every phase is cut at its budget ends in time.
PHASES = (
    Phase("env", "GPU, driver, versions; copy bandwidth and matrix rate (the ceilings)", 25, 60),
    Phase("kernels", "scoring kernels vs float64 and beside torch (`proctor.bench.kernels --check`)", 150, 150),
    Phase("models", "random-init Qwen2.5-1.5B-shaped teacher and RoBERTa-large-shaped critic", 40, 60),
    Phase("serve", "the server on the device through gRPC: every RPC checked against float64", 75, 120),
    Phase("bars", "Score, Score top-20 (gRPC, HTTP), GRPO groups, critic: rates beside their anchors", 120, 120),
    Phase("packed", "Score with packed rows (flex_attention), beside the padded answers", 70, 90),
    Phase("tp", "tensor parallel 2 (`proctor.bench.tp_check`), on machines with 2+ GPUs", 120, 60),
)
PHASE_MODULES = {
    "env": "environment",
    "models": "models",
    "serve": "serving",
    "bars": "bars",
    "packed": "packed",
}


def _run_in_process(name: str, workdir: Path, rehearse: bool) -> None:
    """`--phase NAME`: one phase of ours, in this process (the command starts one such process per phase)."""
    import importlib

    from proctor.bench.gpu_check.context import PhaseContext

    module = importlib.import_module(f"proctor.bench.gpu_check.{PHASE_MODULES[name]}")
    ctx = PhaseContext(workdir, scale(rehearse), PhaseLog(workdir, name))
    module.run(ctx)
    ctx.log.finish()


def _skip_reason(phase: Phase, workdir: Path, rehearse: bool) -> str:
    if phase.name == "tp":
        env = read_record(workdir, "env")
        gpus = int(env.data.get("gpu", {}).get("count", 0)) if env is not None else 0
        if rehearse or gpus < 2:
            return f"needs 2 or more GPUs; {gpus} visible"
        if importlib.util.find_spec("vllm") is None:
            return "needs vLLM on the machine (pip install vllm, or proctor/bench/gpu_vllm.sh prepare DIR)"
    return ""


def _command(phase: Phase, workdir: Path, rehearse: bool) -> list[str]:
    flag = ["--rehearse"] if rehearse else []
    if phase.name == "kernels":
        return [sys.executable, "-m", "proctor.bench.kernels", "--check", "--out", str(workdir / "kernels"), *flag]
    if phase.name == "tp":
        return [sys.executable, "-m", "proctor.bench.tp_check", "--out", str(workdir / "tp"), *flag]
    return [sys.executable, "-m", "proctor.bench.gpu_check", "--phase", phase.name, "--workdir", str(workdir), *flag]


def _say(log: TextIO, line: str) -> None:
    print(line, flush=True)
    log.write(line + "\n")
    log.flush()


def _stream(proc: subprocess.Popen[str], log: TextIO, tail: collections.deque[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        log.write(line)
        log.flush()
        tail.append(line)


def _run_process(command: list[str], budget_s: float, log: TextIO) -> tuple[int | None, str]:
    """(exit code, or None when it ran out of time; the end of its output). The phase runs in a process group of its
    own, so that ending it ends every process it started."""
    tail: collections.deque[str] = collections.deque(maxlen=40)
    # No phase needs a model hub; on a machine without network a lookup would wait for its timeout.
    env = {"HF_HUB_OFFLINE": "1", **os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env
    )
    reader = threading.Thread(target=_stream, args=(proc, log, tail), daemon=True)
    reader.start()
    try:
        code: int | None = proc.wait(timeout=budget_s)
    except subprocess.TimeoutExpired:
        code = None
    # Its whole group goes, at once: a server it started would otherwise drain for its grace period (SIGTERM),
    # holding the GPU while the next phase starts. What the phase recorded is on disk already.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    reader.join(timeout=5)
    return code, "".join(tail)


def _outcome(phase: Phase, code: int | None, record: PhaseRecord | None) -> tuple[str, str]:
    if code is None:
        return OUT_OF_TIME, "its budget ran out; what it had recorded is kept"
    if code != 0:
        return FAIL, f"exited with {code}"
    if record is None and phase.name in PHASE_MODULES:
        return FAIL, "ended without a record"
    if record is not None:
        if not record.finished:
            return FAIL, "ended without finishing its record"
        failed = [c.name for c in record.checks if not c.ok]
        missed = [f.name for f in record.figures if f.met is False]
        if failed:
            return FAIL, "failed: " + ", ".join(failed)
        if missed:
            return PASS, "bars missed: " + ", ".join(missed)
    return PASS, ""


def _external_record(phase: Phase, workdir: Path) -> PhaseRecord | None:
    """The kernels' and the TP check's own JSON, carried into the report whole; each row of theirs that has an
    error bound becomes one of our checks, and their `passed` verdict one more."""
    found = sorted((workdir / phase.name).glob("*.json"))
    if not found:
        return None
    record = PhaseRecord(phase.name, data={p.name: json.loads(p.read_text()) for p in found}, finished=True)
    for name, data in record.data.items():
        for row in data.get("rows", []) if isinstance(data, dict) else []:
            if row.get("tolerance") is not None and row.get("max_err") is not None:
                detail = f"max error {row['max_err']:.1e} (bound {row['tolerance']:.0e}), {row.get('ms', 0):.3f} ms"
                record.checks.append(Check(f"{row.get('case')}: {row.get('impl')}", bool(row.get("ok")), detail))
        if isinstance(data, dict) and "passed" in data:
            record.checks.append(Check(f"{name}: passed", bool(data["passed"]), "the command's own verdict"))
    return record


def run_check(args: argparse.Namespace, now: Callable[[], float] = time.monotonic) -> Path:
    rehearse = bool(args.rehearse)
    total = args.budget_s or (REHEARSAL_BUDGET_S if rehearse else TOTAL_BUDGET_S)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="proctor-gpu-check-"))
    workdir.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(",")) if args.only else None
    flags = ["--rehearse"] * bool(args.rehearse) + [
        f"--{name.replace('_', '-')}={getattr(args, name)}" for name in ("out", "workdir", "only", "budget_s")
        if getattr(args, name)
    ]  # fmt: skip
    command = shlex.join(["python", "-m", "proctor.bench.gpu_check", *flags])
    started = now()
    results: list[PhaseResult] = []
    stem = out / f"{dt.date.today().isoformat()}-pending-gpu-check"
    with open(workdir / "gpu-check.log", "a") as log:
        for phase in PHASES:
            budget = min(phase.rehearse_budget_s if rehearse else phase.budget_s, total - (now() - started))
            if only is not None and phase.name not in only:
                continue
            reason = _skip_reason(phase, workdir, rehearse)
            if reason:
                results.append(PhaseResult(phase.name, phase.what, budget, 0.0, SKIPPED, reason, None))
            elif budget < LEAST_S:
                results.append(PhaseResult(phase.name, phase.what, max(budget, 0), 0.0, OUT_OF_TIME,
                                           "no time left in the whole check's budget", None))  # fmt: skip
            else:
                _say(log, f"== gpu-check phase {phase.name} (budget {budget:.0f} s): {phase.what}")
                t0 = now()
                code, tail = _run_process(_command(phase, workdir, rehearse), budget, log)
                record = read_record(workdir, phase.name) if phase.name in PHASE_MODULES else None
                record = record or _external_record(phase, workdir)
                status, reason = _outcome(phase, code, record)
                shown = tail if status != PASS else ""
                results.append(PhaseResult(phase.name, phase.what, budget, now() - t0, status, reason, record, shown))
                _say(log, f"== gpu-check phase {phase.name}: {status}" + (f" ({reason})" if reason else ""))
            stem = _write_report(out, workdir, results, command, rehearse, total, now() - started, stem)
    shutil.copy(workdir / "gpu-check.log", stem.with_suffix(".log"))
    for own in sorted((workdir / "kernels").glob("*")) + sorted((workdir / "tp").glob("*")):
        shutil.copy(own, out / own.name)  # their own tables, beside the report (at most 8 files come back)
    return stem


def _write_report(
    out: Path,
    workdir: Path,
    results: list[PhaseResult],
    command: str,
    rehearse: bool,
    budget_s: float,
    elapsed_s: float,
    previous: Path,
) -> Path:
    env = read_record(workdir, "env")
    gpu = env.data.get("gpu", {}) if env is not None else {}
    tag = "cpu-rehearsal" if rehearse else str(gpu.get("tag", "unknown-gpu"))
    stem = out / f"{dt.date.today().isoformat()}-{tag}-gpu-check"
    summary: dict[str, Any] = {
        "command": command,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": gpu.get("name", "unknown"),
        "rehearse": rehearse,
        "budget_s": budget_s,
        "elapsed_s": elapsed_s,
        "versions": env.data.get("versions", {}) if env is not None else {},
        "ceilings": env.data.get("ceilings", {}) if env is not None else {},
    }
    write_json(stem.with_suffix(".json"), {**summary, "phases": [r.to_json() for r in results]})
    stem.with_suffix(".md").write_text(markdown(summary, results))
    if previous != stem:
        for suffix in (".json", ".md"):
            previous.with_suffix(suffix).unlink(missing_ok=True)
    return stem


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rehearse", action="store_true", help="the same phases on the CPU, tiny shapes (CI)")
    p.add_argument("--out", default=str(RESULTS), help="where the report goes [bench/results]; on the device: $OUT")
    p.add_argument("--workdir", help="models and phase records (~4 GB on a GPU) [a new temporary folder]")
    p.add_argument("--only", help="comma-separated phases, e.g. env,serve (the rest are left out of the report)")
    p.add_argument("--budget-s", type=float, default=0.0, help="the whole check's budget [480 s; rehearsal 420 s]")
    p.add_argument("--phase", help=argparse.SUPPRESS)  # internal: run one phase in this process


def run(args: argparse.Namespace) -> int:
    if args.phase:
        _run_in_process(args.phase, Path(args.workdir), args.rehearse)
        return 0
    stem = run_check(args)
    print(f"saved {stem}.json, {stem}.md, {stem}.log")
    return 0


DESCRIPTION = (gpu_check.__doc__ or "") + "\nbench/README.md, 'On a GPU machine', gives the calls in order."
COMMAND = Command(
    help="every GPU path checked, and the bars measured, in one command of budgeted phases (<= 8 min on one H200)",
    description=DESCRIPTION,
    add_arguments=add_arguments,
    run=run,
)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m proctor.bench.gpu_check",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    raise SystemExit(run(p.parse_args(argv)))
