"""The kernels check's cases: each proctor kernel on its shapes, checked against float64 on sampled rows, beside
torch and (when importable) Liger-Kernel and cut-cross-entropy. The CPU rehearsal runs Liger's kernels under the
interpreter too, so a change of its API fails there, not in the one GPU run; cut-cross-entropy's kernels take None
pointers, which only the compiler specialises (the interpreter raises), so it runs on CUDA only."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from proctor.bench import cost_model
from proctor.bench.kernels_report import TOLERANCE, Row
from proctor.bench.kernels_timing import measure, measure_ceilings

PROBE_TOKENS = 11  # "0".."10": the RRM's score tokens


@dataclass(frozen=True)
class Shapes:
    logits: tuple[int, int, int]  # rows, vocab, top-k
    logits_more_top_k: tuple[int, ...]  # more top-k cases on the same logits (distillation's 100 and 256)
    lm_head: tuple[int, int, int]  # rows, vocab, hidden
    lm_head_top_k: tuple[int, ...]
    probes: tuple[int, int, int]  # rows, vocab, hidden
    sample: int  # rows checked against float64
    l2_bytes: int  # the buffer the L2 rate reads again and again (fits the GPU's L2)


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


def sample_rows(n: int, sample: int, device: torch.device) -> torch.Tensor:
    return torch.linspace(0, n - 1, min(n, sample), device=device).long()


def torch_logprobs(logits: torch.Tensor, targets: torch.Tensor, top_k: int) -> Outputs:
    """The plain-torch way: float32 log-softmax of the whole [N, V], then gather, entropy and top-k."""
    lsm = torch.log_softmax(logits.float(), dim=-1)
    vals, ids = lsm.topk(top_k, dim=-1) if top_k else (None, None)
    return lsm.gather(1, targets[:, None])[:, 0], -(lsm.exp() * lsm).sum(dim=-1), vals, ids


def lm_head_ms(
    rows: int, vocab: int, hidden: int, top_k: int, set_size: int, ceil: cost_model.Ceilings, rank: bool = False
) -> float:
    return cost_model.lm_head(rows, vocab, hidden, top_k, set_size=set_size, ceil=ceil, rank=rank).ms


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

    n, vocab, first_k = shapes.logits
    logits = c.randn(n, vocab, scale=3.0).to(torch.bfloat16)
    targets = torch.randint(0, vocab, (n,), device=c.device, generator=c.gen)
    rows = sample_rows(n, shapes.sample, c.device)
    ref = torch.log_softmax(logits[rows].double(), dim=-1).cpu()

    def err(out: Outputs) -> float:
        return outputs_err(out, ref, rows, targets)

    for k in (first_k, *shapes.logits_more_top_k):
        case = f"logits -> log-prob + entropy + top-{k}, {n}x{vocab} bf16"
        if k == first_k:
            c.timed(case, "anchor: read the logits once (torch sum)", lambda: logits.sum(dtype=torch.float32))
        c.timed(
            case,
            "proctor target_logprobs, one pass",
            functools.partial(target_logprobs_triton, logits, targets, k),
            err,
            True,
            functools.partial(_logits_ms, n, vocab, k),
        )
        c.timed(
            case,
            "torch fp32 log_softmax + gather + entropy + topk",
            functools.partial(torch_logprobs, logits, targets, k),
            err,
        )

    def liger() -> None:
        from liger_kernel.transformers import LigerCrossEntropyLoss

        loss = LigerCrossEntropyLoss(reduction="none")
        # Liger writes its gradient into the logits in place: it runs last, on a copy made outside the timing.
        own = logits.clone()
        case = f"logits -> log-prob + entropy + top-{first_k}, {n}x{vocab} bf16"
        c.timed(case, "Liger cross-entropy (log-prob only)", lambda: (-loss(own, targets), None, None, None), err)

    c.optional(
        f"logits -> log-prob + entropy + top-{first_k}, {n}x{vocab} bf16", "Liger cross-entropy (log-prob only)", liger
    )


def _logits_ms(rows: int, vocab: int, k: int, ceil: cost_model.Ceilings) -> float:
    return cost_model.logits(rows, vocab, k, ceil=ceil).ms


def check_lm_head(c: Check, shapes: Shapes) -> None:
    from proctor.kernels.lm_head_logprobs import lm_head_logprobs_triton

    n, vocab, hidden = shapes.lm_head
    h = c.randn(n, hidden).to(torch.bfloat16)
    w = c.randn(vocab, hidden, scale=4 / hidden**0.5).to(torch.bfloat16)
    targets = torch.randint(0, vocab, (n,), device=c.device, generator=c.gen)
    rows = sample_rows(n, shapes.sample, c.device)
    logits = (h[rows].double() @ w.double().T).cpu()
    ref = torch.log_softmax(logits, dim=-1)

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
        if not k:  # the fused baselines give the target's log-prob only
            fused_baselines(c, case, h, w, targets, err)
    check_main_loop(c, shapes, h, w)
    check_position_probes(c, shapes, h, w, targets, rows, ref)
    check_ranks(c, shapes, h, w, targets, rows, logits, err)


def check_position_probes(
    c: Check,
    shapes: Shapes,
    h: torch.Tensor,
    w: torch.Tensor,
    targets: torch.Tensor,
    rows: torch.Tensor,
    ref: torch.Tensor,
) -> None:
    """Top-20 with 128 probe ids a position (vLLM's prompt_logprob_token_ids), from the same pass's log-sum-exp;
    checked against float64 on the sampled rows (the probes' and the top-20's errors). Twice: ids drawn from the
    whole vocabulary (nearly every id distinct: the most passes a tile of any random ids) and from 8,192 of its
    words (a student's overlapping top-k: fewer), each beside its own prediction."""
    from proctor.kernels.lm_head_logprobs import lm_head_logprobs_triton

    n, vocab, hidden = shapes.lm_head
    for distinct in (None, min(8_192, vocab)):
        words = torch.randperm(vocab, device=c.device, generator=c.gen)[: distinct or vocab]
        ids = words[torch.randint(0, len(words), (n, 128), device=c.device, generator=c.gen)]
        out = torch.empty(n, 128, device=c.device)
        over = f"{distinct:,} words" if distinct else "the vocabulary"
        case = f"hidden -> lm_head -> log-prob + top-20 + 128 probes a position over {over}, {n}x{vocab}x{hidden} bf16"

        def err(got: Outputs, ids: torch.Tensor = ids, out: torch.Tensor = out) -> float:
            probes = max_err(out.cpu()[rows.cpu()], ref.gather(1, ids.cpu()[rows.cpu()]))
            return max(probes, outputs_err(got, ref, rows, targets))

        def predict(ceil: cost_model.Ceilings, distinct: int | None = distinct) -> float:
            return cost_model.lm_head(n, vocab, hidden, 20, ceil=ceil, probes=128, distinct=distinct).ms

        c.timed(
            case,
            "proctor fused lm_head + probes",
            functools.partial(lm_head_logprobs_triton, h, w, targets, 20, entropy=False, probes=(ids, out)),
            err,
            True,
            predict,
        )


def _rate_note(value: float, unit: str, lead: float, band: tuple[float, ...]) -> str:
    verdict = (
        "meets the lead"
        if value >= lead
        else next((f"meets the {b:g} band" for b in band if value >= b), "below the band")
    )
    return f"{value:.1f} {unit} (lead {lead:g}, band {' / '.join(f'{b:g}' for b in band)}: {verdict})"


def check_main_loop(c: Check, shapes: Shapes, h: torch.Tensor, w: torch.Tensor) -> None:
    """The two rates the cost model's lm_head predictions assume, each measured alone: the Triton main loop with
    the epilogue switched off (its FLOP rate; the lead is cuBLAS's 790 TFLOP/s) and L2 reads (a torch sum of an
    L2-sized buffer read 64 times; a lower bound of the rate, lead 10 TB/s). A first GPU run says which fails.
    The main loop's error (its row sums against float64's, over sqrt(V)) shows that it computed every product."""
    from proctor.kernels.lm_head_logprobs import lm_head_main_loop_triton

    n, vocab, hidden = shapes.lm_head
    case = f"rates the lm_head predictions assume, {n}x{vocab}x{hidden} bf16"
    c.timed(
        case,
        "proctor Triton main loop alone (epilogue off)",
        functools.partial(lm_head_main_loop_triton, h, w),
        lambda out: max_err(out.sum(dim=1), (h.double() @ w.double().T).sum(dim=1)) / vocab**0.5,
        predict=lambda ceil: cost_model.lm_head(n, vocab, hidden, 0, ceil=ceil).mma_ms,
    )
    ms = c.rows[-1].ms
    if ms:
        tflops = 2.0 * n * vocab * hidden / (ms / 1e3) / 1e12
        band = tuple(b.gemm_flops / 1e12 for b in cost_model.BAND)
        c.rows[-1].note = _rate_note(tflops, "TFLOP/s", cost_model.H200.gemm_flops / 1e12, band)
    again = c.randn(shapes.l2_bytes // 4).view(1, -1).expand(64, -1)
    c.timed(case, f"L2 reads alone (torch sum, {shapes.l2_bytes >> 10} KiB read 64 times)", again.sum)
    ms = c.rows[-1].ms
    if ms:
        tbs = 64 * shapes.l2_bytes / (ms / 1e3) / 1e12
        band = tuple(b.l2_bps / 1e12 for b in cost_model.BAND)
        c.rows[-1].note = _rate_note(tbs, "TB/s", cost_model.H200.l2_bps / 1e12, band)


def check_ranks(
    c: Check,
    shapes: Shapes,
    h: torch.Tensor,
    w: torch.Tensor,
    targets: torch.Tensor,
    rows: torch.Tensor,
    logits: torch.Tensor,
    err: Callable[[Outputs], float],
) -> None:
    """The HTTP front's prompt log-probs: top-k and each target's rank in one pass. float64's rank counts the
    logits (float64, of the sampled rows) rounded to bf16, as vLLM ranks its lm_head's bf16 logits; a logit within
    1e-4 (float32 accumulation) of a rounding boundary may round either way. A rank outside those bounds is an
    infinite error."""
    from proctor.kernels.lm_head_logprobs import lm_head_logprobs_triton

    n, vocab, hidden = shapes.lm_head
    k = shapes.lm_head_top_k[1]
    case = f"hidden -> lm_head -> log-prob + entropy + top-{k} + rank, {n}x{vocab}x{hidden} bf16"
    ranks = torch.empty(n, dtype=torch.long, device=c.device)
    at = targets.cpu()[rows.cpu()].long()[:, None]
    others = torch.ones_like(logits, dtype=torch.bool).scatter(1, at, False)
    own = logits.gather(1, at)

    def counted(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return ((x.to(h.dtype) >= t.to(h.dtype)) & others).sum(dim=1) + 1

    low, high = counted(logits - 1e-4, own + 1e-4), counted(logits + 1e-4, own - 1e-4)

    def rank_err(out: Outputs) -> float:
        got = ranks.cpu()[rows.cpu()]
        return err(out) if bool(((low <= got) & (got <= high)).all()) else float("inf")

    c.timed(
        case,
        "proctor fused lm_head + rank",
        functools.partial(lm_head_logprobs_triton, h, w, targets, k, rank_out=ranks),
        rank_err,
        True,
        functools.partial(lm_head_ms, n, vocab, hidden, k, 0, rank=True),
    )


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
    if c.device.type == "cuda":
        c.optional(case, "cut-cross-entropy", cce)
    else:
        c.rows.append(Row(case, "cut-cross-entropy", None, None, None, note="CUDA only (not in the interpreter)"))


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
