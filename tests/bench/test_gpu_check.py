"""gpu-check: its CPU rehearsal end to end (the report's structure), and the budget that cuts a phase short."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from proctor.bench.gpu_check import run
from proctor.bench.gpu_check.report import FAIL, OUT_OF_TIME, PASS, SKIPPED, Figure, PhaseLog, read_record

OURS = ("env", "models", "serve", "bars", "packed")  # and the kernels' own command (issue 16)


@pytest.mark.slow
@pytest.mark.timeout(600)  # ~1 minute of 2 CPU cores: six phase processes and four servers, each importing torch
def test_rehearsal_runs_every_phase_and_reports_it(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "proctor.bench.gpu_check", "--rehearse", "--out", str(out), "--workdir", str(work)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [report_path] = out.glob("*-cpu-rehearsal-gpu-check.json")
    report = json.loads(report_path.read_text())
    assert report["rehearse"] and report["elapsed_s"] <= report["budget_s"] and report["elapsed_s"] <= elapsed
    assert set(report["ceilings"]) == {"copy_gb_s", "matmul_tflops", "matmul_dtype"}
    phases = {p["name"]: p for p in report["phases"]}
    assert list(phases) == [p.name for p in run.PHASES]
    for name in OURS:
        p = phases[name]
        assert p["status"] == PASS, (name, p["reason"], p["log_tail"])
        assert 0 < p["elapsed_s"] <= p["budget_s"] and p["record"]["finished"], name
        assert p["record"]["checks"] and all(c["ok"] for c in p["record"]["checks"]), name
    kernels = phases["kernels"]
    assert kernels["status"] == PASS, (kernels["reason"], kernels["log_tail"])
    assert kernels["record"]["data"]["kernels-check.json"]["rehearsal"] and kernels["record"]["checks"]
    assert (out / "kernels-check.json").exists() and (out / "kernels-check.md").exists()
    assert phases["tp"]["status"] == SKIPPED and phases["tp"]["reason"]
    figures = {f["name"]: f for p in report["phases"] if p["record"] for f in p["record"]["figures"]}
    rates = ("Score through gRPC", "Score top-20 through gRPC", "Score top-20 through HTTP (/v1/completions "
             "prompt_logprobs)", "GRPO groups, one step", "Critic through gRPC")  # fmt: skip
    for name in rates:
        f = figures[name]
        assert f["value"] > 0 and f["anchor_value"] > 0 and f["of_ceiling"] > 0, f  # a loaded CPU may pass 1
        assert f["target"] is None and f["met"] is None, "a rehearsal judges no GPU bar"
    errors = [f for f in figures.values() if f["unit"] == "nats"]
    assert len(errors) >= 5 and all(f["met"] for f in errors), errors
    assert all(math.isfinite(f["value"]) for f in figures.values())
    md = report_path.with_suffix(".md").read_text()
    assert all(f"| {name} |" in md for name in phases) and "## Figures" in md
    assert report_path.with_suffix(".log").read_text().count("== gpu-check phase") >= 2 * len(OURS)


def test_a_phase_past_its_budget_is_ended_with_what_it_started(tmp_path: Path) -> None:
    # A "phase" that records, starts a child, and then hangs: cut at its budget, its child goes with it.
    script = (
        "import subprocess, sys, time\n"
        "from pathlib import Path\n"
        "from proctor.bench.gpu_check.report import PhaseLog\n"
        f"log = PhaseLog(Path({str(tmp_path)!r}), 'slow')\n"
        "log.check('first', True, 'recorded before the budget ran out')\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"Path({str(tmp_path / 'child')!r}).write_text(str(child.pid))\n"
        "time.sleep(60)\n"
    )
    with open(tmp_path / "log", "w") as log:
        t0 = time.monotonic()
        code, _ = run._run_process([sys.executable, "-c", script], 8.0, log)
    assert code is None and time.monotonic() - t0 < 20
    child = Path(f"/proc/{int((tmp_path / 'child').read_text())}/stat")
    for _ in range(50):  # SIGKILL is delivered at once; the kernel takes a moment to tear the process down
        if not child.exists() or child.read_text().split()[2] == "Z":
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the phase's child is still running: {child.read_text()}")
    record = read_record(tmp_path, "slow")
    assert record is not None and not record.finished and [c.name for c in record.checks] == ["first"]
    status, reason = run._outcome(run.Phase("slow", "", 8, 8), code, record)
    assert status == OUT_OF_TIME and reason


def test_outcomes_of_our_phases(tmp_path: Path) -> None:
    phase = run.Phase("serve", "", 1, 1)
    log = PhaseLog(tmp_path, "serve")
    log.check("a", True, "")
    assert run._outcome(phase, 0, log.record)[0] == FAIL, "a phase must finish its record"
    log.figure(Figure("rate", 1.0, "tok/s", target=2.0))
    log.finish()
    assert run._outcome(phase, 0, log.record) == (PASS, "bars missed: rate")
    log.check("b", False, "")
    assert run._outcome(phase, 0, log.record) == (FAIL, "failed: b")
    assert run._outcome(phase, 1, log.record) == (FAIL, "exited with 1")


def test_proctor_gpu_check_runs_one_phase_alone(tmp_path: Path) -> None:
    from proctor.engine.cli import main

    assert main(["gpu-check", "--rehearse", "--only", "env", "--out", str(tmp_path), "--workdir", str(tmp_path)]) == 0
    [report] = [json.loads(p.read_text()) for p in tmp_path.glob("*-gpu-check.json")]
    assert [(p["name"], p["status"]) for p in report["phases"]] == [("env", PASS)]
    assert report["command"].endswith(f"gpu_check --rehearse --out={tmp_path} --workdir={tmp_path} --only=env")


def test_the_h200_budgets_fit_eight_minutes() -> None:
    one_gpu = [p for p in run.PHASES if p.name != "tp"]  # tp runs only where 2+ GPUs are visible
    assert sum(p.budget_s for p in one_gpu) <= run.TOTAL_BUDGET_S <= 8 * 60


def test_the_flop_counts_are_the_models_own_matrices() -> None:
    """The shares of the ceiling count 2 FLOPs per weight of every matrix a token meets (+ attention): checked
    against the real transformers models of the bars' shapes, built on the meta device."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, Qwen2ForCausalLM

    from proctor.bench.gpu_check.models import decoder_flops, encoder_flops, teacher_config
    from proctor.bench.gpu_check.scale import QWEN_1_5B, ROBERTA_LARGE

    def matrices(module: torch.nn.Module) -> int:
        return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))

    with torch.device("meta"):
        teacher = Qwen2ForCausalLM(teacher_config(QWEN_1_5B))
        critic = BertForSequenceClassification(BertConfig(**ROBERTA_LARGE, num_labels=1))
    assert 1.5e9 < sum(p.numel() for p in teacher.parameters()) < 1.6e9  # Qwen2.5-1.5B: 1.54 B, tied embeddings
    attention = 2 * 2 * QWEN_1_5B["num_hidden_layers"] * QWEN_1_5B["hidden_size"] * 1 * 1 / 2
    assert decoder_flops(QWEN_1_5B, 1, 0) == 2 * matrices(teacher.model.layers) + attention
    assert decoder_flops(QWEN_1_5B, 1, 1) - decoder_flops(QWEN_1_5B, 1, 0) == 2 * teacher.lm_head.weight.numel()
    attention = 2 * 2 * ROBERTA_LARGE["num_hidden_layers"] * ROBERTA_LARGE["hidden_size"]
    assert encoder_flops(ROBERTA_LARGE, 1) == 2 * matrices(critic.bert.encoder) + attention
