"""The scoring kernels' GPU check: each kernel against its float64 reference, timed beside torch, Liger-Kernel and
cut-cross-entropy (when importable) in the same run.

    python -m proctor.bench.kernels --check                    # on one H200: the issue's shapes, <= 3 minutes
    python -m proctor.bench.kernels --check --rehearse         # tiny shapes, Triton's interpreter on the CPU (CI)
    python -m proctor.bench.kernels --check --out DIR          # DIR/kernels-check.{json,md}

Cases (the issue's targets): logits [16,384, 151,936] bf16 -> log-prob + entropy + top-20; hidden [16,384, 4,096]
x lm_head [151,936, 4,096] bf16 -> log-prob + entropy (top-k 0 and 20); RRM probes / expected score on 256 rows.
Every proctor row is checked on a sample of rows against float64 (log-probs, entropies, top-k values, and that each
top-k id points at its value) and fails the run past 1e-4; the other rows report their error without gating.
Time is the median over repetitions (CUDA events), extra memory the peak allocated over the inputs. Each case also
carries the cost model's prediction (proctor.bench.cost_model) so one GPU run confirms or refutes it.

Without --out the report goes to bench/results/YYYY-MM-DD-<gpu>-kernels-check.{json,md} (<gpu> "cpu" when
rehearsing). The exit status is 1 when any proctor kernel misses its tolerance or writes a NaN.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import math
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from proctor.bench import cost_model

RESULTS = Path(__file__).resolve().parent / "results"
TOLERANCE = 1e-4  # max abs error vs float64, the issue's bar for every proctor kernel


@dataclass
class Row:
    case: str
    impl: str
    ms: float | None
    extra_gib: float | None
    max_err: float | None
    tolerance: float | None = None  # set on the rows the check gates (proctor's kernels)
    predicted_ms: float | None = None  # the cost model with its leads (bench/cost_model.py)
    predicted_measured_ms: float | None = None  # the cost model with the ceilings measured in this run
    note: str = ""

    @property
    def ok(self) -> bool:
        if self.tolerance is None:
            return True
        return self.max_err is not None and not math.isnan(self.max_err) and self.max_err <= self.tolerance


@dataclass(frozen=True)
class Shapes:
    logits: tuple[int, int, int]  # rows, vocab, top-k
    lm_head: tuple[int, int, int]  # rows, vocab, hidden
    lm_head_top_k: tuple[int, ...]
    probes: tuple[int, int, int]  # rows, vocab, hidden
    sample: int  # rows checked against float64


FULL = Shapes(
    logits=(16_384, 151_936, 20),
    lm_head=(16_384, 151_936, 4_096),
    lm_head_top_k=(0, 20),
    probes=(256, 151_936, 4_096),
    sample=48,
)
REHEARSAL = Shapes(logits=(5, 700, 20), lm_head=(6, 600, 48), lm_head_top_k=(0, 20), probes=(3, 600, 48), sample=4)
PROBE_TOKENS = 11  # "0".."10": the RRM's score tokens


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(fn: Callable[[], Any], device: torch.device, reps: int) -> tuple[float, float | None, Any]:
    """(median ms, peak extra GiB over what was allocated before, first output). The first call warms up (Triton
    compiles there) and its output is the one checked."""
    first = fn()
    _sync(device)
    if device.type == "cuda":
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    extra = (torch.cuda.max_memory_allocated() - base) / 2**30 if device.type == "cuda" else None
    return statistics.median(times), extra, first


def max_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Max abs difference; a NaN in `got` (an output the kernel did not write) gives NaN."""
    diff = (got.detach().double().cpu() - ref.double().cpu()).abs()
    if torch.isnan(diff).any():
        return float("nan")
    return float(diff.max()) if diff.numel() else 0.0


Outputs = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]


def outputs_err(got: Outputs, ref_logprobs: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor) -> float:
    """Worst error of (log-prob, entropy or None, top-k values or None, top-k ids or None) on the sampled rows,
    against the float64 log-softmax of those rows [s, V]: the target's log-prob, the entropy, the top-k values, and
    the reference's log-prob at each returned id (ties may pick other ids with equal values)."""
    lp, ent, vals, ids = got
    rows_cpu = rows.cpu()
    t = targets.cpu()[rows_cpu].long()
    errs = [max_err(lp.cpu()[rows_cpu], ref_logprobs.gather(1, t[:, None])[:, 0])]
    if ent is not None:
        errs.append(max_err(ent.cpu()[rows_cpu], -(ref_logprobs.exp() * ref_logprobs).sum(dim=1)))
    if vals is not None and ids is not None:
        k = vals.shape[1]
        v, i = vals.cpu()[rows_cpu], ids.cpu()[rows_cpu].long()
        errs += [max_err(v, ref_logprobs.topk(k, dim=1).values), max_err(v, ref_logprobs.gather(1, i))]
    return float("nan") if any(math.isnan(e) for e in errs) else max(errs)


def device_tag(device: torch.device) -> str:
    """The GPU's short name for file names (h200, h100, ...); "cpu" off CUDA."""
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower()
    found = re.search(r"(h100|h200|a100|l40s|l4|b200|a10g|4090)", name)
    return found.group(1) if found else re.sub(r"[^a-z0-9]+", "-", name).strip("-")


def sample_rows(n: int, sample: int, device: torch.device) -> torch.Tensor:
    return torch.linspace(0, n - 1, min(n, sample), device=device).long()


def torch_logprobs(logits: torch.Tensor, targets: torch.Tensor, top_k: int) -> Outputs:
    """The plain-torch way: float32 log-softmax of the whole [N, V], then gather, entropy and top-k."""
    lsm = torch.log_softmax(logits.float(), dim=-1)
    vals, ids = lsm.topk(top_k, dim=-1) if top_k else (None, None)
    return lsm.gather(1, targets[:, None])[:, 0], -(lsm.exp() * lsm).sum(dim=-1), vals, ids


def lm_head_ms(rows: int, vocab: int, hidden: int, top_k: int, set_size: int, ceil: cost_model.Ceilings) -> float:
    return cost_model.lm_head(rows, vocab, hidden, top_k, set_size=set_size, ceil=ceil).ms


def measure_ceilings(
    device: torch.device, reps: int, copy_bytes: int = 2**30, gemm_n: int = 8192, l2_bytes: int = 24 * 2**20
) -> cost_model.Ceilings:
    """The cost model's three rates, measured in this run: a 1 GiB device copy (bytes read + written), a bf16
    8192^3 matmul, and L2 reads (a torch sum over a 24 MiB buffer expanded 64 times: one kernel re-reading
    L2-resident data; torch's reduction makes it a lower bound)."""
    src = torch.randn(copy_bytes // 2, device=device).to(torch.bfloat16)
    dst = torch.empty_like(src)
    copy_ms = measure(lambda: dst.copy_(src), device, reps)[0]
    a, b = (torch.randn(gemm_n, gemm_n, device=device).to(torch.bfloat16) for _ in range(2))
    gemm_ms = measure(lambda: a @ b, device, reps)[0]
    again = torch.randn(l2_bytes // 4, device=device).view(1, -1).expand(64, -1)
    l2_ms = measure(lambda: again.sum(), device, reps)[0]
    return cost_model.Ceilings(
        gemm_flops=2 * gemm_n**3 / (gemm_ms / 1e3),
        hbm_bps=2 * copy_bytes / (copy_ms / 1e3),
        l2_bps=64 * l2_bytes / (l2_ms / 1e3),
    )


def torch_lm_head(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, top_k: int) -> Outputs:
    return torch_logprobs(h @ w.T, targets, top_k)


class Check:
    """One run: the device, the repetitions, the rows gathered so far."""

    def __init__(self, device: torch.device, reps: int) -> None:
        self.device = device
        self.reps = reps
        self.measured: cost_model.Ceilings | None = None
        if device.type == "cuda":
            try:
                self.measured = measure_ceilings(device, reps)
            except RuntimeError as exc:  # the correctness check must run even if a ceiling cannot be measured
                print(f"ceilings not measured: {exc}")
        self.rows: list[Row] = []
        self.gen = torch.Generator(device).manual_seed(0)

    def randn(self, *shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, device=self.device, generator=self.gen) * scale

    def timed(
        self,
        case: str,
        impl: str,
        fn: Callable[[], Any],
        err: Callable[[Any], float] | None = None,
        gated: bool = False,
        predict: Callable[[cost_model.Ceilings], float] | None = None,
    ) -> None:
        ms, extra, out = measure(fn, self.device, self.reps)
        self.rows.append(
            Row(
                case,
                impl,
                ms,
                extra,
                err(out) if err else None,
                TOLERANCE if gated else None,
                predict(cost_model.H200) if predict else None,
                predict(self.measured) if predict and self.measured else None,
            )
        )

    def optional(self, case: str, impl: str, run: Callable[[], None]) -> None:
        """A third-party baseline: absent or failing, it leaves a row saying why instead of stopping the check."""
        try:
            run()
        except ImportError as exc:
            self.rows.append(Row(case, impl, None, None, None, note=f"not installed ({exc.name})"))
        except Exception as exc:  # a baseline's own failure is reported, never ours to fix
            self.rows.append(Row(case, impl, None, None, None, note=f"failed: {type(exc).__name__}: {exc}"[:200]))


def check_logits(c: Check, shapes: Shapes) -> None:
    from proctor.kernels.target_logprobs import target_logprobs_triton

    n, vocab, k = shapes.logits
    case = f"logits -> log-prob + entropy + top-{k}, {n}x{vocab} bf16"
    logits = c.randn(n, vocab, scale=3.0).to(torch.bfloat16)
    targets = torch.randint(0, vocab, (n,), device=c.device, generator=c.gen)
    rows = sample_rows(n, shapes.sample, c.device)
    ref = torch.log_softmax(logits[rows].double(), dim=-1).cpu()

    def err(out: Outputs) -> float:
        return outputs_err(out, ref, rows, targets)

    c.timed(case, "anchor: read the logits once (torch sum)", lambda: logits.sum(dtype=torch.float32))

    def predicted(ceil: cost_model.Ceilings) -> float:
        return cost_model.logits(n, vocab, k, ceil=ceil).ms

    c.timed(
        case,
        "proctor target_logprobs, one pass",
        lambda: target_logprobs_triton(logits, targets, k),
        err,
        True,
        predicted,
    )
    c.timed(case, "torch fp32 log_softmax + gather + entropy + topk", lambda: torch_logprobs(logits, targets, k), err)
    if c.device.type == "cuda":

        def liger() -> None:
            from liger_kernel.transformers import LigerCrossEntropyLoss

            loss = LigerCrossEntropyLoss(reduction="none")
            # Liger writes its gradient into the logits in place: it runs last, on a copy made outside the timing.
            own = logits.clone()
            c.timed(case, "Liger cross-entropy (log-prob only)", lambda: (-loss(own, targets), None, None, None), err)

        c.optional(case, "Liger cross-entropy (log-prob only)", liger)


def check_lm_head(c: Check, shapes: Shapes) -> None:
    from proctor.kernels.lm_head_logprobs import lm_head_logprobs_triton

    n, vocab, hidden = shapes.lm_head
    h = c.randn(n, hidden).to(torch.bfloat16)
    w = c.randn(vocab, hidden, scale=4 / hidden**0.5).to(torch.bfloat16)
    targets = torch.randint(0, vocab, (n,), device=c.device, generator=c.gen)
    rows = sample_rows(n, shapes.sample, c.device)
    ref = torch.log_softmax(h[rows].double() @ w.double().T, dim=-1).cpu()

    def err(out: Outputs) -> float:
        return outputs_err(out, ref, rows, targets)

    for k in shapes.lm_head_top_k:
        case = f"hidden -> lm_head -> log-prob + entropy{f' + top-{k}' if k else ''}, {n}x{vocab}x{hidden} bf16"
        if k == shapes.lm_head_top_k[0]:
            c.timed(case, "anchor: lm_head GEMM alone (torch, bf16 out)", lambda: h @ w.T)
        predicted = functools.partial(lm_head_ms, n, vocab, hidden, k, 0)
        c.timed(
            case,
            "proctor fused lm_head",
            functools.partial(lm_head_logprobs_triton, h, w, targets, k),
            err,
            True,
            predicted,
        )
        c.timed(case, "torch bf16 GEMM + fp32 log_softmax", functools.partial(torch_lm_head, h, w, targets, k), err)
        if not k and c.device.type == "cuda":  # the fused baselines give the target's log-prob only
            fused_baselines(c, case, h, w, targets, err)


def fused_baselines(
    c: Check, case: str, h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, err: Callable[[Outputs], float]
) -> None:
    def liger() -> None:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        loss = LigerFusedLinearCrossEntropyLoss(reduction="none")
        c.timed(case, "Liger fused linear cross-entropy", lambda: (-loss(w, h, targets), None, None, None), err)

    def cce() -> None:
        from cut_cross_entropy import linear_cross_entropy

        def run() -> Outputs:
            return -linear_cross_entropy(h, w, targets, reduction="none"), None, None, None

        c.timed(case, "cut-cross-entropy", run, err)

    c.optional(case, "Liger fused linear cross-entropy", liger)
    c.optional(case, "cut-cross-entropy", cce)


def check_probes(c: Check, shapes: Shapes) -> None:
    from proctor.kernels.expected_score import token_logprobs_triton

    n, vocab, hidden = shapes.probes
    case = f"RRM probes / expected score, {n} rows x {PROBE_TOKENS} tokens, V={vocab}, H={hidden} bf16"
    h = c.randn(n, hidden).to(torch.bfloat16)
    w = c.randn(vocab, hidden, scale=4 / hidden**0.5).to(torch.bfloat16)
    ids = torch.arange(PROBE_TOKENS, device=c.device) * 7 + 15
    ref = torch.log_softmax(h.double() @ w.double().T, dim=-1)[:, ids].cpu()
    logits = h @ w.T
    ref_from_logits = torch.log_softmax(logits.double(), dim=-1)[:, ids].cpu()

    def err(out: torch.Tensor) -> float:
        return max_err(out, ref)

    c.timed(case, "anchor: read the weight once (torch sum)", lambda: w.sum(dtype=torch.float32))
    predicted = functools.partial(lm_head_ms, n, vocab, hidden, 0, PROBE_TOKENS)
    c.timed(
        case, "proctor token_logprobs, fused lm_head", lambda: token_logprobs_triton(h, w, ids), err, True, predicted
    )
    c.timed(
        case,
        "proctor token_logprobs from bf16 logits",
        lambda: token_logprobs_triton(logits, None, ids),
        lambda out: max_err(out, ref_from_logits),
        True,
    )
    c.timed(case, "torch bf16 GEMM + fp32 log_softmax", lambda: torch.log_softmax((h @ w.T).float(), -1)[:, ids], err)


def run_check(shapes: Shapes, device: torch.device, reps: int) -> tuple[list[Row], cost_model.Ceilings | None]:
    """(rows, the ceilings measured in this run: None off CUDA)."""
    c = Check(device, reps)
    for check in (check_logits, check_lm_head, check_probes):
        check(c, shapes)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return c.rows, c.measured


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def write_report(
    rows: list[Row],
    stem: Path,
    device: torch.device,
    command: str,
    rehearsal: bool,
    measured: cost_model.Ceilings | None = None,
) -> bool:
    """Writes stem.json and stem.md; returns whether every gated row passed."""
    passed = all(r.ok for r in rows)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    stem.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "device": name,
        "date": dt.date.today().isoformat(),
        "command": command,
        "rehearsal": rehearsal,
        "tolerance": TOLERANCE,
        "passed": passed,
        "ceilings_measured": asdict(measured) if measured else None,
        "ceilings_leads": asdict(cost_model.H200),
        "rows": [asdict(r) | {"ok": r.ok} for r in rows],
    }
    stem.with_name(stem.name + ".json").write_text(json.dumps(record, indent=2) + "\n")
    what = "rehearsal (tiny shapes, Triton interpreter, CPU: times are not GPU figures)" if rehearsal else name
    lines = [
        f"# Scoring kernels check: {what}",
        "",
        f"Command: `{command}` ({record['date']}). Max abs error vs float64 on sampled rows; proctor's rows must be",
        f"<= {TOLERANCE:g}. Verdict: **{'passed' if passed else 'FAILED'}**.",
        "",
        *(
            [
                f"Ceilings measured in this run: bf16 GEMM {measured.gemm_flops / 1e12:.0f} TFLOP/s, copy "
                f"{measured.hbm_bps / 1e12:.2f} TB/s, L2 reads >= {measured.l2_bps / 1e12:.1f} TB/s (the cost model's "
                "leads: 790, 4.3, 10).",
                "",
            ]
            if measured
            else []
        ),
        "| case | implementation | ms | predicted ms (leads) | predicted ms (measured ceilings) | extra GiB | max err "
        "| check |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        verdict = r.note or ("-" if r.tolerance is None else "ok" if r.ok else "FAIL")
        lines.append(
            f"| {r.case} | {r.impl} | {_fmt(r.ms, '.3f')} | {_fmt(r.predicted_ms, '.3f')} | "
            f"{_fmt(r.predicted_measured_ms, '.3f')} | "
            f"{_fmt(r.extra_gib, '.3f')} | {_fmt(r.max_err, '.1e')} | {verdict} |"
        )
    stem.with_name(stem.name + ".md").write_text("\n".join(lines) + "\n")
    return passed


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
    passed = write_report(rows, stem, device, command.strip(), args.rehearse, measured)
    for r in rows:
        print(f"{r.case[:60]:<60} {r.impl[:48]:<48} {_fmt(r.ms, '9.3f')} ms  err {_fmt(r.max_err, '.1e')}  {r.note}")
    print(f"{'passed' if passed else 'FAILED'} in {time.perf_counter() - t0:.0f} s: {stem}.{{json,md}}")
    return 1 if args.check and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
