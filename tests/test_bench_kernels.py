"""The kernel benchmark harness runs end to end (CPU, small shapes, reference paths; no timing claims)."""

from __future__ import annotations

import pytest

from proctor.bench import kernels


def test_small_cpu_run(capsys: pytest.CaptureFixture[str]) -> None:
    kernels.main(["--device", "cpu", "--small", "--reps", "1", "--no-save"])
    out = capsys.readouterr().out
    assert "proctor fused lm_head" in out and "proctor expected score" in out
    assert "nan" not in out.split("err")[-1]
