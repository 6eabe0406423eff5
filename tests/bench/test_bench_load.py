"""`proctor bench` drives every workload end to end (tiny items, embedded server, no timing claims)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from proctor.bench import load
from proctor.engine.cli import main


@pytest.mark.parametrize(("workload", "mode"), [("skd", "closed"), ("grpo", "closed"), ("score", "open")])
def test_each_workload_runs(workload: str, mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setattr(load, "RESULTS", tmp_path)
    assert (
        main(["bench", "--workload", workload, "--mode", mode, "--items", "6", "--concurrency", "2", "--rate", "200"])
        == 0
    )
    out = capsys.readouterr().out
    assert "errors 0" in out, out
    [report] = [json.loads(p.read_text()) for p in tmp_path.glob(f"*-bench-{workload}.json")]
    assert list(tmp_path.glob(f"*-bench-{workload}.md"))
    [level] = report["levels"]
    assert level["server_cpu_us_per_item"] is not None, "the bench's own server: its CPU is read (in 10 ms ticks)"
    assert (level["in_process_us_per_item"] is not None) == (workload == "grpo"), "the anchor where one exists"
    if workload == "skd":  # model batches ran: their statistics come from the server's /metrics
        assert level["batch_items_mean"] >= 1 and 0 <= level["batch_padding_mean"] < 1
    if not torch.cuda.is_available():
        assert level["gpu_memory_peak_gib"] is None


def test_grpo_rollouts_are_well_formed() -> None:
    import random

    from proctor.engine.rewards.rollout import atoms, check_format

    rollout = load._rollout(random.Random(0))
    assert check_format(rollout).ok and len(atoms(rollout)) >= 2 and len(rollout) > 2000


def test_gpu_memory_peak_and_batch_statistics_are_read_off_metrics_text() -> None:
    from proctor.bench.server import histogram_totals, peak_in

    text = (
        "# TYPE proctor_gpu_memory_peak_bytes gauge\n"
        'proctor_gpu_memory_peak_bytes{device="cuda:0"} 1.5e+09\n'
        'proctor_gpu_memory_peak_bytes{device="cuda:1"} 2.5e+09\n'
        'proctor_gpu_memory_bytes{device="cuda:1"} 9e+09\n'
    )
    assert peak_in(text) == 2.5e9
    assert peak_in("proctor_serving 1\n") is None  # no CUDA: no gauge
    histogram = (
        'proctor_batch_size_items_sum{model="a",rpc="Score"} 30.0\n'
        'proctor_batch_size_items_count{model="a",rpc="Score"} 3.0\n'
        'proctor_batch_size_items_sum{model="b",rpc="Classify"} 10.0\n'
        'proctor_batch_size_items_count{model="b",rpc="Classify"} 2.0\n'
        'proctor_batch_size_items_bucket{model="b",rpc="Classify",le="1.0"} 0.0\n'
    )
    assert histogram_totals(histogram, "proctor_batch_size_items") == (40.0, 5.0)
    assert histogram_totals("", "proctor_batch_size_items") == (0.0, 0.0)
