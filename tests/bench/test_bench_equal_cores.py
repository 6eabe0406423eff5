"""The pieces the vLLM comparison stands on: the cores it gives each server, the CPU seconds it counts (children
included), and the log-prob difference it reports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch

from proctor.bench.http_prompt_logprobs import VLLM_ROW, floor_summary, max_logprob_diff
from proctor.bench.server import omp_bound, parse_cores, pinned_to, tree_cpu_seconds


def test_core_lists_and_the_openmp_environment_vllm_gives_its_worker() -> None:
    assert parse_cores("0-1,3") == [0, 1, 3]
    assert parse_cores("") == sorted(os.sched_getaffinity(0))
    assert omp_bound([0, 1]) == {"OMP_NUM_THREADS": "2", "OMP_PLACES": "{0,1}", "OMP_PROC_BIND": "true"}


def test_a_process_trees_cpu_seconds_count_its_children() -> None:
    """A parent that only waits on a child spinning ~0.5 s of CPU: the tree holds both, the child's time counted."""
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass\ntime.sleep(30)"
    parent = f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {burn!r}])"
    first = parse_cores("")[:1]
    proc = subprocess.Popen([sys.executable, "-c", parent], preexec_fn=pinned_to(first))
    tree: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            tree = tree_cpu_seconds(proc.pid)
            if len(tree) == 2 and sum(tree.values()) >= 0.5:
                break
            time.sleep(0.2)
        assert len(tree) == 2 and sum(tree.values()) >= 0.5, tree
        child = next(int(key.split()[-1]) for key in tree if int(key.split()[-1]) != proc.pid)
        assert os.sched_getaffinity(child) == set(first), "the child keeps the cores it was given"
    finally:
        for pid in {int(key.split()[-1]) for key in tree} - {proc.pid}:  # the child this test started
            os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait()


def test_the_largest_log_prob_difference_matches_tokens_by_id() -> None:
    a = [[None, {"5": {"logprob": -1.0}, "7": {"logprob": -2.0}}]]
    b = [[None, {"7": {"logprob": -2.5}, "9": {"logprob": -0.1}}]]
    assert max_logprob_diff(a, b) == (0.5, 1)


def test_the_gemm_floor_counts_every_layers_products_and_the_lm_head_for_the_scored_positions() -> None:
    from transformers import AutoModelForCausalLM

    from proctor.bench.gemm_floor import floor, linear_weights
    from proctor.engine.backends.builtin_models import resolve_model

    model = AutoModelForCausalLM.from_pretrained(resolve_model("builtin:tiny"), dtype=torch.float32).eval()
    layers = model.config.num_hidden_layers
    assert len(linear_weights(model)) == 7 * layers  # q, k, v, o, gate, up, down: the lm_head is timed apart
    vocab, hidden = model.get_output_embeddings().weight.shape
    per_token = sum(w.numel() for w in linear_weights(model))
    # 5 sequences of 6 tokens in passes of 2, 2 and 1: 30 tokens through the layers, 25 through the lm_head
    result = floor(model, sequences=5, length=6, batch=2, repeats=1)
    assert result["flop"] == 2 * 30 * per_token + 2 * 25 * vocab * hidden
    assert result["seconds"] > 0 and len(result["seconds_every_pass"]) == 1


def test_the_floor_summary_reads_each_row_and_the_target_against_its_own_rounds_floor() -> None:
    rows = [{VLLM_ROW: {"wall_s": 18.0}, "p": {"wall_s": 15.0}}, {VLLM_ROW: {"wall_s": 12.0}, "p": {"wall_s": 9.0}}]
    rounds = [
        {"rows": r, "gemm_floor": {"seconds": f, "gflop": 3.0, "gflop_per_s": 1.0}}
        for r, f in zip(rows, (10.0, 6.0), strict=True)
    ]
    out = floor_summary(rounds, target=1.5)
    assert out["wall_over_floor"] == {VLLM_ROW: [1.8, 2.0], "p": [1.5, 1.5]}
    assert out["target_wall_over_floor"] == [1.2, 1.33]
