"""Hopper compile report: every Triton kernel compiled for sm_90 (H100 / H200) on a machine without a GPU, at the
launches the dispatchers really make, with what the compiler gave it.

    python -m proctor.bench.hopper [--out DIR] [--check] [--kernels {lm_head,logits} ...]

Each variant is compiled with `triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))` with the same
constexprs, warps, stages and argument specialisations (16-divisible integers and pointers, integers equal to 1)
that a launch from the dispatcher would get. The cubin goes through the wheel's own `cuobjdump
--dump-resource-usage` (registers, stack = spills, static shared memory) and the PTX is searched for wgmma
(`wgmma.mma_async`) and the bulk tensor copy engine (`cp.async.bulk.tensor`). A variant fails when it spills, when
its shared memory passes the 227 KB an sm_90 block may use, or when its 16-bit `tl.dot` does not lower to wgmma.

The H200 machines run triton 3.6.0 (torch 2.11): CI compiles with that version in its own `pip --target` folder
(.ci/run); the report under bench/results is from it. Launches: bf16 / fp16 / fp32; top-k 0 and one per running
top-k slot count (1, 2, 4, 8, 16, 20 for 32 slots, 64); H 576, 1,536, 4,096, 8,192; Score batches of 16,384 rows
(in chunks with top-k) and RRM probes of 1, 11 and 256 rows; with a rank (the HTTP front's prompt log-probs, top-k
or not) at the same rows; with per-position probes (128 ids a row, Score's and the HTTP front's prompt token ids;
any count compiles alike) at the same rows, rank or not. The logits kernel: the same top-k and 100 and 256, one a
K_PAD (k itself is a runtime argument), held to the registers its launch asks (`maxnreg`).

`--kernels logits` compiles only that kernel's variants and carries the lm_head rows over from the newest
committed report (of the same triton), saying so in the report: for a change to one kernel, a few minutes less.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
SMEM_LIMIT = 227 * 1024  # bytes of shared memory one sm_90 block may use (opt-in maximum)
# The vocabularies users load: Llama 2 / Mistral 7B, the same with two added tokens (32,002: Mistral fine-tunes
# such as OpenHermes; a two-column tail, whose `vocab` gets no hint), a 48k BPE (49,152: SmolLM2, StarCoder2),
# GPT-2 / RoBERTa (50,257: a one-column tail, `vocab` the constant 1), Llama 3, Qwen2 / 2.5 / 3, Gemma.
VOCABS = (32_000, 32_002, 49_152, 50_257, 128_256, 151_936, 256_000)
HIDDENS = (576, 1_536, 4_096, 8_192)
SCORE_ROWS = 16_384
PROBE_ROWS = (1, 11, 256)
PROBE_TOKENS = 11  # an RRM's score tokens "0".."10"
TOP_KS = (0, 1, 2, 4, 8, 16, 20, 64)  # every running top-k slot count (20: 32 slots)
LOGITS_TOP_KS = (*TOP_KS, 100, 256)  # the logits kernel: one k a K_PAD (k itself is not specialised on)
DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


@dataclass
class Variant:
    """One compiled kernel: its key, the launches that use it, and what the compiler reported."""

    kernel: str
    dtype: str
    top_k: int
    tile: str
    num_warps: int
    num_stages: int
    tokens: int = 0  # the set of tokens whose logits the launch also picks (RRM probes), 0 for Score
    rank: bool = False  # also counts the logits at or above each row's target's (prompt-logprob ranks)
    probes: int = 0  # token ids each row probes (Score's per-position probes: 128, read from the tiles), 0: none
    part: str = ""  # lm_head: "body" (the vocabulary's first multiple of 16 columns) or "tail" (the 1-15 after)
    hints: str = ""  # the integer specialisations it relies on (divisible by 16, equal to 1)
    vocabs: list[int] = field(default_factory=list)  # the vocabularies whose launches use it
    launches: list[str] = field(default_factory=list)  # the row counts whose launches use it
    hiddens: list[int] = field(default_factory=list)  # H values of those launches (a runtime argument)
    maxnreg: int = 0  # the registers a thread is held to (ptxas's .maxnreg), 0: not held
    registers: int = -1
    stack: int = -1
    shared: int = -1
    wgmma: int = -1
    tma: int = -1
    compile_s: float = 0.0

    @property
    def problems(self) -> list[str]:
        out = []
        if self.stack != 0:
            out.append(f"stack {self.stack} B (spills)")
        if self.shared > SMEM_LIMIT:
            out.append(f"shared {self.shared} B > {SMEM_LIMIT}")
        if self.dtype != "fp32" and self.kernel == "lm_head" and self.wgmma <= 0:
            out.append("16-bit tl.dot not on wgmma")
        return out


def _specialise(
    fn: Any, pointers: dict[str, str], ints: dict[str, int], consts: dict[str, object], fixed: tuple[str, ...] = ()
) -> tuple[dict[str, str], dict[str, object], dict[tuple[int, ...], list[list[Any]]]]:
    """(signature, constexprs, attrs) as a launch specialises them: pointers 16-aligned (torch allocations are),
    integers divisible by 16 marked so, integers equal to 1 made constants; the `fixed` ones (the kernel's
    do_not_specialize) left plain."""
    signature: dict[str, str] = {}
    constexprs = dict(consts)
    attrs: dict[tuple[int, ...], list[list[Any]]] = {}
    for i, name in enumerate(fn.arg_names):
        if name in fixed:
            signature[name] = "i32" if -(2**31) <= ints[name] < 2**31 else "i64"
        elif name in pointers:
            signature[name] = pointers[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in ints:
            value = ints[name]
            if value == 1:
                signature[name], constexprs[name] = "constexpr", 1
            else:
                signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
                if value % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "constexpr"
    return signature, constexprs, attrs


def _resources(cubin: bytes, tool: Path) -> dict[str, int]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True, check=True)
    found = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text.stdout))
    return {k: int(v) for k, v in found.items()}


def compile_sm90(
    fn: Any,
    pointers: dict[str, str],
    ints: dict[str, int],
    consts: dict[str, object],
    warps: int,
    stages: int,
    maxnreg: int = 0,
) -> Any:
    """Triton's CompiledKernel of one launch, for sm_90, specialised as the launch would be."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fixed = tuple(getattr(fn, "do_not_specialize", None) or ())  # the kernel's own (JITFunction)
    signature, constexprs, attrs = _specialise(fn, pointers, ints, consts, fixed)
    return triton.compile(
        ASTSource(fn, signature, constexprs, attrs),
        target=GPUTarget("cuda", 90, 32),
        options={"num_warps": warps, "num_stages": stages} | ({"maxnreg": maxnreg} if maxnreg else {}),
    )


def compile_variant(
    variant: Variant,
    fn: Any,
    pointers: dict[str, str],
    ints: dict[str, int],
    consts: dict[str, object],
) -> Variant:
    import triton

    t0 = time.perf_counter()
    compiled = compile_sm90(fn, pointers, ints, consts, variant.num_warps, variant.num_stages, variant.maxnreg)
    variant.compile_s = round(time.perf_counter() - t0, 2)
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    res = _resources(compiled.asm["cubin"], tool)
    ptx = compiled.asm["ptx"]
    variant.registers = res.get("REG", -1)
    variant.stack = res.get("STACK", -1) + res.get("LOCAL", 0)
    variant.shared = compiled.metadata.shared + res.get("SHARED", 0)
    variant.wgmma = ptx.count("wgmma.mma_async")
    variant.tma = ptx.count("cp.async.bulk.tensor")
    return variant


Key = tuple[Any, ...]


def _key(kernel: str, dtype: str, top_k: int, warps: int, stages: int, sig: Any) -> Key:
    signature, constexprs, attrs = sig
    return (
        kernel,
        dtype,
        top_k,
        warps,
        stages,
        repr(sorted(signature.items())),
        repr(sorted(constexprs.items())),
        repr(sorted(attrs)),
    )


def _hints(fn: Any, sig: Any, ints: dict[str, int]) -> str:
    """The integer specialisations a variant relies on (pointers are always 16-byte aligned): the arguments
    marked divisible by 16, and those made the constant 1."""
    _, constexprs, attrs = sig
    div = [fn.arg_names[i] for (i,) in attrs if fn.arg_names[i] in ints]
    one = [name for name in ints if constexprs.get(name) == 1]
    return ", ".join([f"{name} % 16 == 0" for name in div] + [f"{name} == 1" for name in one]) or "none"


Compile = tuple[Variant, Any, dict[str, str], dict[str, int], dict[str, object]]


def _note(variant: Variant, vocab: int, rows: str, hidden: int | None = None) -> None:
    variant.vocabs += [] if vocab in variant.vocabs else [vocab]
    variant.launches += [] if rows in variant.launches else [rows]
    if hidden is not None:
        variant.hiddens += [] if hidden in variant.hiddens else [hidden]


def lm_head_variants() -> list[Compile]:
    lm = importlib.import_module("proctor.kernels.lm_head_logprobs")  # the package re-exports a function so named
    plan = importlib.import_module("proctor.kernels.lm_head_plan")

    out: dict[Key, Compile] = {}
    for dtype, name in DTYPES.items():
        types = [f"*{name}", f"*{name}", "*i32", "*fp32", "*fp32", "*fp32", "*i32", "*i32", "*fp32"]
        types += ["*i32", "*i32", "*i32", "*fp32"]  # the probes' ids, starts, passes and logits
        pointers = dict(zip(lm.POINTERS, types, strict=True))
        for top_k in TOP_KS:
            # Score (one target a row, top-k) at a batch's and at a few rows, with and without a rank (the HTTP
            # front's prompt log-probs), with and without per-position probes; RRM probes (a set of score tokens).
            uses = [
                (rows, 0, rank, probes)
                for rows in (SCORE_ROWS, *PROBE_ROWS)
                for rank in (False, True)
                for probes in (0, lm.MAX_PROBES)
            ]
            uses += [(rows, PROBE_TOKENS, False, 0) for rows in PROBE_ROWS] if top_k == 0 else []
            for vocab, (rows, set_size, rank, probes), hidden in itertools.product(VOCABS, uses, HIDDENS):
                body = plan.lm_head_launches(rows, vocab, dtype, top_k, plan.H200_SMS, set_size, rank, probes)
                tails = [plan.lm_head_tail(launch, vocab) for launch in body]
                for launch in dict.fromkeys([*body, *(t for t in tails if t is not None)]):
                    ints, consts = lm.kernel_arguments(launch, hidden, hidden, hidden, dtype)
                    sig = _specialise(lm._lm_head_kernel, pointers, ints, consts, tuple(lm.UNSPECIALISED))
                    key = _key("lm_head", name, top_k, launch.num_warps, launch.num_stages, sig)
                    tile = f"{launch.block_n}x({launch.block_v}+{launch.block_v2})x{launch.block_h}"
                    if key not in out:
                        part = "tail" if launch.col0 else "body"
                        v = Variant(
                            "lm_head", name, top_k, tile, launch.num_warps, launch.num_stages, set_size, rank, probes
                        )
                        v.part, v.hints = part, _hints(lm._lm_head_kernel, sig, ints)
                        out[key] = (v, lm._lm_head_kernel, pointers, ints, consts)
                    what = f"{rows}" + (f" (launches of {launch.rows})" if launch.rows != rows else "")
                    _note(out[key][0], vocab, what, hidden)
    return list(out.values())


def logits_variants() -> list[Compile]:
    tp = importlib.import_module("proctor.kernels.target_logprobs")

    out: dict[Key, Compile] = {}
    for dtype, name in DTYPES.items():
        types = [f"*{name}", "*i64", "*fp32", "*fp32", "*fp32", "*fp32", "*i32", "*fp32"]
        pointers = dict(zip(tp.POINTERS, types, strict=True))
        for top_k, vocab in itertools.product(LOGITS_TOP_KS, VOCABS):
            launch = tp.logits_launch(SCORE_ROWS, vocab, top_k)
            ints, consts = tp.kernel_arguments(launch, vocab, vocab, dtype)
            sig = _specialise(tp._target_logprobs_kernel, pointers, ints, consts, tuple(tp.UNSPECIALISED))
            key = _key("logits", name, top_k, launch.num_warps, launch.num_stages, sig)
            if key not in out:
                v = Variant("logits", name, top_k, f"1x{launch.block_v}", launch.num_warps, launch.num_stages)
                v.hints, v.maxnreg = _hints(tp._target_logprobs_kernel, sig, ints), launch.maxnreg or 0
                out[key] = (v, tp._target_logprobs_kernel, pointers, ints, consts)
            _note(out[key][0], vocab, f"any ({launch.programs} persistent programs at {SCORE_ROWS:,})")
    return list(out.values())


KERNELS = {"lm_head": lm_head_variants, "logits": logits_variants}


def build_all(progress: bool = True, kernels: tuple[str, ...] = tuple(KERNELS)) -> list[Variant]:
    done = []
    for v, fn, pointers, ints, consts in [c for name in kernels for c in KERNELS[name]()]:
        done.append(compile_variant(v, fn, pointers, ints, consts))
        if progress:
            print(
                f"{v.kernel:<8} {v.part:<4} {v.dtype} top-{v.top_k:<3} set-{v.tokens:<2} "
                f"{'rank ' if v.rank else ''}{f'probes-{v.probes} ' if v.probes else ''}{v.tile:<11} "
                f"w{v.num_warps} s{v.num_stages}{f' r{v.maxnreg}' if v.maxnreg else ''}: "
                f"{v.registers} regs, stack {v.stack}, smem {v.shared}, wgmma {v.wgmma}, tma {v.tma} "
                f"({v.compile_s:.1f} s) {'; '.join(v.problems)}",
                flush=True,
            )
    return done


def carried_over(kernels: tuple[str, ...]) -> tuple[list[Variant], str]:
    """The newest committed report's variants of the kernels named (what a run restricted to the others keeps),
    and that report's name; it must be of this triton."""
    import triton

    reports = sorted(RESULTS.glob("*-cpu-hopper-compile.json"))
    if not reports:
        raise SystemExit("no committed report to carry the other kernels' variants from: compile them all")
    record = json.loads(reports[-1].read_text())
    if record["triton"] != triton.__version__:
        raise SystemExit(f"{reports[-1].name} is of triton {record['triton']}, not {triton.__version__}")
    names = {f.name for f in fields(Variant)}
    rows = [Variant(**{k: v for k, v in row.items() if k in names}) for row in record["variants"]]
    return [v for v in rows if v.kernel in kernels], reports[-1].name


def write_report(
    variants: list[Variant], stem: Path, command: str, elapsed_s: float, carried: tuple[list[Variant], str] = ([], "")
) -> None:
    """The compiled variants, and any carried over unchanged from an earlier report (`carried_over`)."""
    import triton

    stem.parent.mkdir(parents=True, exist_ok=True)
    kept, source = carried
    compiled = variants
    variants = [v for name in KERNELS for v in [*kept, *compiled] if v.kernel == name]
    record = {
        "date": dt.date.today().isoformat(),
        "command": command,
        "triton": triton.__version__,
        "target": "cuda:90 (sm_90, H100 / H200), PTX 8.x via the wheel's ptxas",
        "smem_limit": SMEM_LIMIT,
        "vocabs": list(VOCABS),
        "elapsed_s": round(elapsed_s),
        "compile_s": round(sum(v.compile_s for v in compiled)),
        "passed": not any(v.problems for v in variants),
        "carried_from": {"report": source, "kernels": sorted({v.kernel for v in kept})} if kept else None,
        "variants": [asdict(v) | {"problems": v.problems} for v in variants],
    }
    stem.with_name(stem.name + ".json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        f"# Hopper compile report (triton {triton.__version__}, sm_90, compiled on a CPU)",
        "",
        f"Command: `{command}` ({record['date']}). Registers, stack (spills) and shared memory from the wheel's",
        "`cuobjdump --dump-resource-usage`; wgmma / TMA = `wgmma.mma_async` / `cp.async.bulk.tensor` in the PTX.",
        f"Verdict: **{'passed' if record['passed'] else 'FAILED'}** (no stack, shared <= 227 KB, 16-bit dots on "
        "wgmma).",
        "",
        f"Vocabularies: {', '.join(f'{v:,}' for v in VOCABS)}; H {', '.join(map(str, HIDDENS))}; rows "
        f"{SCORE_ROWS:,} and {', '.join(map(str, PROBE_ROWS))}. {len(variants)} distinct compiles (launches that "
        "specialise alike compile once: the grid's integers are not specialised on, so the vocabulary changes only "
        f"the hints), {record['compile_s']} s of compiling {len(compiled)} of them, {record['elapsed_s']} s in all "
        "on this machine's 2 cores. The lm_head kernel's body launch covers the vocabulary's first multiple of 16 "
        "columns (its `vocab` keeps the divisibility hint); a vocabulary that is not a multiple of 16 (50,257) adds "
        "a tail launch of its last 1-15 columns in one 16-column block, its partials one more split.",
        "",
        *(
            [
                f"Carried over, not compiled in this run: the {', '.join(record['carried_from']['kernels'])} "
                f"variants ({len(kept)}), rows copied from `{source}` (same triton); this run compiled the rest.",
                "",
            ]
            if kept
            else []
        ),
        "| kernel | part | dtype | top-k | set | rank | probes | tile | warps | stages | regs (held to) | stack B "
        "| shared KB | wgmma | TMA | hints | vocabularies | rows; H | problems |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        rows = "; ".join(v.launches) + (f"; H {', '.join(map(str, v.hiddens))}" if v.hiddens else "")
        lines.append(
            f"| {v.kernel} | {v.part} | {v.dtype} | {v.top_k} | {v.tokens} | {'yes' if v.rank else ''} | "
            f"{v.probes or ''} | {v.tile} | "
            f"{v.num_warps} | {v.num_stages} | {v.registers}{f' ({v.maxnreg})' if v.maxnreg else ''} | {v.stack} | "
            f"{v.shared / 1024:.1f} | {v.wgmma} | "
            f"{v.tma} | {v.hints} | {', '.join(map(str, v.vocabs))} | {rows} | {'; '.join(v.problems) or 'ok'} |"
        )
    stem.with_name(stem.name + ".md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write DIR/hopper-compile.{json,md} (default: dated, bench/results)")
    parser.add_argument("--check", action="store_true", help="exit 1 on a spill, too much shared memory, no wgmma")
    parser.add_argument(
        "--kernels",
        nargs="+",
        choices=tuple(KERNELS),
        default=list(KERNELS),
        help="compile only these kernels' variants; the others' rows are carried over from the newest committed "
        "report, and the report says so",
    )
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    kernels = tuple(k for k in KERNELS if k in args.kernels)
    carried = carried_over(tuple(k for k in KERNELS if k not in kernels)) if len(kernels) < len(KERNELS) else ([], "")
    with tempfile.TemporaryDirectory() as cache:  # cold compiles: Triton's own cache would time a hit
        os.environ["TRITON_CACHE_DIR"] = cache
        variants = build_all(kernels=kernels)
    stem = args.out / "hopper-compile" if args.out else RESULTS / f"{dt.date.today().isoformat()}-cpu-hopper-compile"
    command = "python -m proctor.bench.hopper " + " ".join(sys.argv[1:] if argv is None else argv)
    write_report(variants, stem, command.strip(), time.perf_counter() - t0, carried)
    bad = [v for v in [*carried[0], *variants] if v.problems]
    took = time.perf_counter() - t0
    print(f"{len(variants)} compiled, {len(carried[0])} carried over, {len(bad)} with problems, {took:.0f} s: {stem}")
    return 1 if args.check and bad else 0


if __name__ == "__main__":
    sys.exit(main())
