"""The scoring kernels' GPU check: each kernel against its float64 reference, timed beside torch, Liger-Kernel and
cut-cross-entropy (when importable) in the same run.

    python -m proctor.bench.kernels --check                    # on one H200: the issue's shapes, <= 3 minutes
    python -m proctor.bench.kernels --check --rehearse         # tiny shapes, Triton's interpreter on the CPU (CI)
    python -m proctor.bench.kernels --check --out DIR          # DIR/kernels-check.{json,md}

Cases (the issue's targets): logits [16,384, 151,936] bf16 -> log-prob + entropy + top-20, top-100 and top-256;
hidden [16,384, 4,096] x lm_head [151,936, 4,096] bf16 -> log-prob + entropy (top-k 0, 20, 100 and 256, each beside
torch's top-k of materialised log-softmax); the two rates the lm_head predictions assume, each alone; RRM probes /
expected score on 256 rows.
Every proctor row is checked on a sample of rows against float64 (log-probs, entropies, top-k values, and that each
top-k id points at its value) and fails the run past 1e-4; the other rows report their error without gating.
Time is the median over repetitions (CUDA events), extra memory the peak allocated over the inputs. Each case also
carries the cost model's prediction (proctor.bench.cost_model) so one GPU run confirms or refutes it.

Without --out the report goes to bench/results/YYYY-MM-DD-<gpu>-kernels-check.{json,md} (<gpu> "cpu" when
rehearsing). On a GPU the report also lists every variant the run compiled, with its registers and spills as the
driver loaded it (bench/kernels_compiled.py). The exit status is 1 when any proctor kernel misses its tolerance,
writes a NaN or spills.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

import torch

from proctor.bench.kernels_cases import Shapes, run_check
from proctor.bench.kernels_compiled import compiled_kernels
from proctor.bench.kernels_report import fmt, write_report
from proctor.bench.kernels_timing import device_tag

RESULTS = Path(__file__).resolve().parent / "results"

FULL = Shapes(
    logits=(16_384, 151_936, 20),
    logits_more_top_k=(100, 256),
    lm_head=(16_384, 151_936, 4_096),
    lm_head_top_k=(0, 20, 100, 256),
    probes=(256, 151_936, 4_096),
    sample=48,
    l2_bytes=24 * 2**20,
)
REHEARSAL = Shapes(
    logits=(5, 700, 20),
    logits_more_top_k=(256,),
    lm_head=(6, 600, 48),
    lm_head_top_k=(0, 20, 256),
    probes=(3, 600, 48),
    sample=4,
    l2_bytes=2**16,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 when a proctor kernel misses its tolerance")
    parser.add_argument("--rehearse", action="store_true", help="tiny shapes under TRITON_INTERPRET=1 on the CPU")
    parser.add_argument("--out", type=Path, help="write DIR/kernels-check.{json,md} (default: dated in bench/results)")
    parser.add_argument("--reps", type=int, help="timed repetitions per row (default 10 on CUDA, 1 rehearsing)")
    args = parser.parse_args(argv)
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    if args.rehearse:
        if not interpreting and any(m.startswith("proctor.kernels") for m in sys.modules):
            raise SystemExit("--rehearse: proctor.kernels was imported before TRITON_INTERPRET=1 could be set")
        os.environ["TRITON_INTERPRET"] = "1"  # read by triton.jit when the kernel modules are first imported
        device, shapes = torch.device("cpu"), REHEARSAL
    else:
        if interpreting:
            raise SystemExit("TRITON_INTERPRET=1 is set: the GPU check would run the interpreter (use --rehearse)")
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: the check runs on a GPU (--rehearse runs tiny shapes on the CPU)")
        device, shapes = torch.device("cuda"), FULL
    reps = args.reps if args.reps is not None else (1 if args.rehearse else 10)
    t0 = time.perf_counter()
    rows, measured = run_check(shapes, device, reps)
    command = "python -m proctor.bench.kernels " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.out is not None:
        stem = args.out / "kernels-check"
    else:
        stem = RESULTS / f"{dt.date.today().isoformat()}-{device_tag(device)}-kernels-check"
    compiled = compiled_kernels()  # empty under the interpreter
    passed = write_report(rows, stem, device, command.strip(), args.rehearse, measured, compiled)
    for r in rows:
        print(f"{r.case[:60]:<60} {r.impl[:48]:<48} {fmt(r.ms, '9.3f')} ms  err {fmt(r.max_err, '.1e')}  {r.note}")
    print(f"{'passed' if passed else 'FAILED'} in {time.perf_counter() - t0:.0f} s: {stem}.{{json,md}}")
    return 1 if args.check and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
