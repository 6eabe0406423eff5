"""The Hopper compile report's bars: every launch the dispatchers make compiles for sm_90 with no stack (spills),
shared memory within the 227 KB a block may use, and its 16-bit tl.dot on wgmma.

Compiling needs triton 3.6.0, the version on the project's H200 machines (other versions lower differently): CI
installs it with `pip --target` in its own step (.ci/run) and runs this file with TRITON_INTERPRET=0. Everywhere,
the committed report must be of the current launches and clean.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from proctor.bench import hopper

triton = pytest.importorskip("triton")

FIELDS = ("kernel", "part", "dtype", "top_k", "tokens", "rank", "probes", "tile", "num_warps", "num_stages", "hints")
REPORTS = sorted(hopper.RESULTS.glob("*-cpu-hopper-compile.json"))


def _keys(variants: list[hopper.Variant]) -> set[tuple[object, ...]]:
    return {tuple(getattr(v, f) for f in FIELDS) for v in variants}


def test_the_committed_report_is_of_the_current_launches_and_clean() -> None:
    assert REPORTS, "no bench/results/*-cpu-hopper-compile.json: run python -m proctor.bench.hopper"
    record = json.loads(REPORTS[-1].read_text())
    assert record["triton"] == "3.6.0" and record["passed"]
    assert all(v["stack"] == 0 and v["shared"] <= hopper.SMEM_LIMIT for v in record["variants"])
    assert record["vocabs"] == list(hopper.VOCABS)
    # 531 compiles: 490 s in test_every_launch_compiles_for_sm90_without_spills on two cores (~0.9 s a compile)
    assert len(record["variants"]) <= 540, "CI's step has 900 s: <= 1.65 s a compile on two cores, one compile a key"
    assert {v for variant in record["variants"] for v in variant["vocabs"]} == set(hopper.VOCABS)
    committed = {tuple(v[f] for f in FIELDS) for v in record["variants"]}
    current = _keys([v for v, *_ in [*hopper.lm_head_variants(), *hopper.logits_variants()]])
    assert committed == current, "the launches changed: re-run python -m proctor.bench.hopper with triton 3.6.0"


TRITON_36 = pytest.mark.skipif(
    triton.__version__ != "3.6.0" or os.environ.get("TRITON_INTERPRET") == "1",
    reason="compiles with triton 3.6.0 and TRITON_INTERPRET=0 (CI's Hopper step)",
)


@TRITON_36
@pytest.mark.timeout(900)  # 531 compiles of 0.2-4 s each: ~8-10 minutes on two cores
def test_every_launch_compiles_for_sm90_without_spills(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))  # every variant compiled, none read from a cache
    variants = hopper.build_all(progress=False)
    assert {f"{v.kernel} {v.dtype} top-{v.top_k} {v.tile}": v.problems for v in variants if v.problems} == {}
    assert all(v.wgmma > 0 for v in variants if v.kernel == "lm_head" and v.dtype != "fp32")


@TRITON_36
def test_the_gpu_check_reads_a_compiled_variant_as_the_report_does() -> None:
    """The GPU check lists what the GPU's own JIT compiled (bench/kernels_compiled.py): the same object, read here
    from a CPU compile (registers and spills stay unknown until a driver loads it)."""
    from proctor.bench.kernels_compiled import describe

    variant, fn, pointers, ints, consts = next(v for v in hopper.lm_head_variants() if v[0].dtype == "bf16")
    compiled = describe(
        "_lm_head_kernel", hopper.compile_sm90(fn, pointers, ints, consts, variant.num_warps, variant.num_stages)
    )
    assert compiled.constexprs["BLOCK_N"] == consts["BLOCK_N"] and compiled.constexprs["K"] == variant.top_k
    assert set(compiled.constexprs) == {k for k in consts if k.isupper()}
    assert (compiled.num_warps, compiled.num_stages) == (variant.num_warps, variant.num_stages)
    assert compiled.wgmma > 0 and compiled.shared > 0
    assert compiled.registers is None and compiled.spills is None and compiled.problem == ""
