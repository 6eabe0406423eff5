"""The GPU check's CPU rehearsal (tiny shapes, Triton's interpreter): it passes on the real kernels, writes its
report, and fails when a kernel is wrong."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

from proctor.bench import kernels, kernels_timing

pytest.importorskip("triton")


def test_rehearsal_passes_and_writes_its_report(tmp_path: Path) -> None:
    assert kernels.main(["--check", "--rehearse", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "kernels-check.json").read_text())
    assert record["passed"] and record["rehearsal"]
    gated = [r for r in record["rows"] if r["tolerance"] is not None]
    assert {r["impl"] for r in gated} == {
        "proctor target_logprobs, one pass",
        "proctor fused lm_head",
        "proctor fused lm_head + rank",
        "proctor fused lm_head + probes",
        "proctor token_logprobs, fused lm_head",
        "proctor token_logprobs from bf16 logits",
    }
    assert len(gated) == 10 and all(r["ok"] and r["max_err"] <= 1e-4 for r in gated)
    assert {r["case"].split(",")[0] for r in gated if "top-256" in r["case"]} == {
        "logits -> log-prob + entropy + top-256",
        "hidden -> lm_head -> log-prob + entropy + top-256",
    }, "distillation's top-256 on both kernels"
    # Liger-Kernel's own kernels, called as the GPU run calls them (bf16 in, so not held to 1e-4 here)
    liger = [r for r in record["rows"] if r["impl"].startswith("Liger")]
    assert {r["impl"] for r in liger} == {"Liger cross-entropy (log-prob only)", "Liger fused linear cross-entropy"}
    assert all(not r["note"] and r["ms"] is not None and r["max_err"] < 0.1 for r in liger), liger
    # the two rates the lm_head predictions assume, each measured alone and set against the lead and the band
    rates = {r["impl"]: r for r in record["rows"] if r["case"].startswith("rates the lm_head predictions assume")}
    assert set(rates) == {
        "proctor Triton main loop alone (epilogue off)",
        "L2 reads alone (torch sum, 64 KiB read 64 times)",
    }
    assert all(r["ms"] > 0 and "(lead " in r["note"] and "band" in r["note"] for r in rates.values()), rates
    assert "TFLOP/s" in rates["proctor Triton main loop alone (epilogue off)"]["note"]
    cce = next(r for r in record["rows"] if r["impl"] == "cut-cross-entropy")
    assert cce["note"].startswith("CUDA only")
    assert "**passed**" in (tmp_path / "kernels-check.md").read_text()


def test_a_wrong_kernel_fails_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The package re-exports a function of the module's name: take the module itself.
    module = importlib.import_module("proctor.kernels.target_logprobs")
    real = module.target_logprobs_triton

    def off_by_a_little(*args: object, **kw: object) -> tuple[torch.Tensor | None, ...]:
        lp, ent, vals, ids = real(*args, **kw)
        return lp + 2e-4, ent, vals, ids

    monkeypatch.setattr(module, "target_logprobs_triton", off_by_a_little)
    assert kernels.main(["--check", "--rehearse", "--out", str(tmp_path)]) == 1
    assert "FAILED" in (tmp_path / "kernels-check.md").read_text()


def test_a_rank_off_by_one_fails_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = importlib.import_module("proctor.kernels.lm_head_logprobs")
    real = module.lm_head_logprobs_triton

    def one_too_many(*args: object, rank_out: torch.Tensor | None = None, **kw: object) -> object:
        out = real(*args, rank_out=rank_out, **kw)
        if rank_out is not None:
            rank_out += 1
        return out

    monkeypatch.setattr(module, "lm_head_logprobs_triton", one_too_many)
    assert kernels.main(["--check", "--rehearse", "--out", str(tmp_path)]) == 1
    rows = json.loads((tmp_path / "kernels-check.json").read_text())["rows"]
    assert [r["ok"] for r in rows if r["tolerance"] is not None and not r["ok"]] == [False]


def test_ceilings_are_measured_as_rates() -> None:
    """The GPU run re-measures the cost model's leads; here the same code on the CPU at small sizes."""
    got = kernels_timing.measure_ceilings(torch.device("cpu"), reps=2, copy_bytes=2**20, gemm_n=64, l2_bytes=2**16)
    assert all(0 < rate < float("inf") for rate in (got.gemm_flops, got.hbm_bps, got.l2_bps))
