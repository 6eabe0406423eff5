"""What each scoring-kernel launch should cost on one H200, from its grid and tiles and the measured ceilings.

    python -m proctor.bench.cost_model [--out DIR]

For every launch the dispatchers make at the issue's shapes (the same `lm_head_launches` / `logits_launch` the
kernels use) it counts the FLOPs, the bytes through HBM and through L2 (the re-reads the grid and tiles imply),
and the CUDA-core work of the epilogue (exp, reductions, the running top-k), and predicts a time:

    launch + max(tensor-core time + epilogue time, HBM time, L2 time)   (lm_head: one CTA per SM, no overlap of a
                                                                         program's own GEMM and epilogue)
    launch + max(CUDA-core time, HBM time, L2 time) + the host's sort   (logits: 4-8 programs per SM overlap)

Ceilings and where they come from (the first GPU run should re-measure the two leads):
- bf16 tensor cores 790 TFLOP/s: an 8192^3 bf16 torch matmul on random data on this project's H200s (769-798,
  measured there on 2026-10-28 and 2026-11-04). A Triton wgmma main loop is assumed to reach it.
- HBM 4.3 TB/s: a device-to-device copy there, bytes read plus written (same page).
- L2 -> SM 10 TB/s: a LEAD, not measured here (H100 SXM's L2 is commonly quoted near 12 TB/s; 10 is a margin).
- CUDA cores 33.8 T simple fp32/int32 ops/s (128 lanes x 132 SMs x 1.98 GHz, the clock seen under load) and
  exp2 4.2 T/s (16 per SM per clock, the CUDA guide's throughput table for sm_90): datasheet leads.
- 5 us per kernel launch (torch's own small kernels of the combine included).
Top-k insertions assume the large logits lie in random order along the vocabulary (about K x H_U merge passes over
U merge units, each over its unit's columns, doubled for the max over a block's rows); an adversarial vocabulary in
ascending order costs K passes per unit. The logits kernel's candidate buffer likewise (`admission`); its CUDA-core
work also counts each reduction across a program's warps (shuffles and a shared-memory round trip), which its
one-row tiles pay per tile and per counting pass. It assumes 4 programs of 4 warps an SM (128 registers) keep HBM
busy with one 4 KiB tile each in flight: 2.1 MB across the GPU, enough at 4.3 TB/s only if a load returns within
~0.5 us; the GPU check's time for it says whether they do.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import importlib
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from proctor.kernels.topk_select import RUNNING_SLOTS

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Ceilings:
    """The rates a prediction divides by; the GPU check re-measures them in its own run."""

    gemm_flops: float = 790e12
    hbm_bps: float = 4.3e12
    l2_bps: float = 10e12


H200 = Ceilings()
SMS = 132
CLOCK_HZ = 1.98e9
ALU_OPS = 128 * SMS * CLOCK_HZ
EXP_OPS = 16 * SMS * CLOCK_HZ
LAUNCH_S = 5e-6
# CUDA-core operations per logit in the epilogues (max, subtract, scale for exp2, two multiply-adds of the running
# sums, target compare / select / add, column mask): counted from the kernels' code, not measured.
EPILOGUE_OPS = 10
TOPK_PRUNE_OPS = 2  # compare with the row's k-th best, select
TOPK_PASS_OPS = 6  # one merge pass over a tile: max, compare, select-min of the lane, mask, compare, select
RANK_OPS = 4  # compare with the row's threshold, two masks, add
SORT_PASSES = 8  # a host's sort of [N, k] (a key and an index): a segmented radix sort's passes, a lead
# Per-position probes read from the tiles (kernels/probe_logprobs.py), counted from the kernel's code (leads): a pass
# over a tile compares each column with its row's next id, selects and adds (3 operations a logit), then per row a
# shuffle reduction, a store, a compare and a load (~16); and it waits for that load of the rows' next ids (an L1 or L2
# hit, ~600 cycles: not measured) before the next pass.
PROBE_PASS_OPS = 3
PROBE_ROW_OPS = 16
PROBE_PASS_S = 600 / CLOCK_HZ
# The host's order of a launch's probes (probe_order, its starts and passes, the final gather), bytes through HBM a
# probe: the ids made int32; a segmented sort of (int32 id, int64 place), SORT_PASSES passes read and written; the
# first-of-its-id mask, the slots' cumsum and two scatters; the passes' tile, run and block indices, a cummax and a
# scatter-amax (~130); the gather and the subtraction of the log-sum-exp. ~25 torch launches a launch, tail included.
PROBE_HOST_BYTES = 12 + SORT_PASSES * 12 * 2 + 60 + 130 + 24
PROBE_HOST_LAUNCHES = 25


@dataclass
class Prediction:
    case: str
    launches: int
    flops: float
    hbm_bytes: float
    l2_bytes: float
    alu_ops: float
    exp_ops: float
    mma_ms: float
    alu_ms: float
    hbm_ms: float
    l2_ms: float
    ms: float
    extra_bytes: float  # the launch's own buffers (partials, candidates), beyond inputs and outputs
    bound: str
    target_ms: float | None = None

    @property
    def meets_target(self) -> bool:
        return self.target_ms is None or self.ms <= self.target_ms


def topk_pass_columns(k: int, widths: list[int]) -> float:
    """Expected columns that one row's running top-k sweeps in merge passes over merge units of these widths, in
    the order merged, the large logits in random order: a unit of w columns after W seen holds w * min(1, K / W) of
    the best K so far, each a pass over the unit. Equal units of w >= K give K x H_units passes of w columns."""
    if not k:
        return 0.0
    seen, swept = 0, 0.0
    for w in widths:
        seen += w
        swept += w * min(1.0, k / seen) * w
    return swept


@functools.cache
def probe_passes(
    block_n: int, width: int, columns: int, probes: int, distinct: int | None, crowded: bool, vocab: int
) -> float:
    """Expected passes the kernel makes over one tile of `width` columns (of `columns`) for a block of `block_n`
    rows with `probes` distinct ids each: the most ids one of the rows has in the tile. Ids drawn from a pool of
    `distinct` ids spread evenly over the vocabulary (None: the whole vocabulary): m of the pool in the tile
    (binomial), each row holding each with probability probes / pool, so a row's count is binomial(m, that) and the
    passes the expected maximum over the rows. `crowded`: each row's ids in tiles of their own, so the block's
    rows pay probes passes each: block_n x probes over the tiles."""
    tiles = -(-columns // width)
    if crowded:
        return block_n * probes / tiles
    pool = min(vocab, distinct or vocab)
    q, p_tile = min(1.0, probes / pool), width / vocab
    mean = pool * p_tile
    spread = int(mean + 12 * math.sqrt(mean) + 12)
    expected = 0.0
    for m in range(min(pool, spread) + 1):
        weight = math.exp(_log_binomial(pool, m, p_tile))
        if weight < 1e-12:
            continue
        below, most = 0.0, 0.0
        for k in range(m + 1):  # E[max] = sum over k >= 1 of P(max >= k)
            below += math.exp(_log_binomial(m, k, q)) if q < 1.0 else float(k == m)
            most += 1.0 - min(1.0, below) ** block_n
            if below >= 1.0 - 1e-12:
                break
        expected += weight * most
    return expected


def _log_binomial(n: int, k: int, p: float) -> float:
    """log P(binomial(n, p) = k)."""
    if p >= 1.0:
        return 0.0 if k == n else -math.inf
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p) + (n - k) * math.log1p(-p)


def lm_head(
    rows: int,
    vocab: int,
    hidden: int,
    top_k: int,
    dtype: torch.dtype = torch.bfloat16,
    set_size: int = 0,
    ceil: Ceilings = H200,
    rank: bool = False,
    probes: int = 0,
    distinct: int | None = None,
    crowded: bool = False,
) -> Prediction:
    """The fused kernel's launches and their combines; set_size > 0 is the RRM probes' path (token_logprobs),
    which also picks that many tokens' logits out of the tiles and subtracts the log-sum-exp (one more launch);
    rank (the HTTP front's prompt log-probs) first gathers each row's target row of the weight for its threshold
    (a few torch launches), then counts in the tiles; probes (per position that many token ids, read from the
    tiles: kernels/probe_logprobs.py) adds the host's order of them and, per tile, the passes `probe_passes`
    expects for ids drawn from `distinct` ids spread over the vocabulary (None: any id, |U| ~ V), or `crowded`
    (each row's ids packed together, apart from its block's other rows': the most passes)."""
    plan = importlib.import_module("proctor.kernels.lm_head_plan")
    elt = torch.empty(0, dtype=dtype).element_size()
    zero = dict.fromkeys(("flops", "hbm_bytes", "l2_bytes", "alu_ops", "exp_ops", "mma_ms", "alu_ms"), 0.0)
    zero |= dict.fromkeys(("hbm_ms", "l2_ms", "ms", "extra_bytes"), 0.0)
    total = Prediction(f"lm_head {rows}x{vocab}x{hidden} top-{top_k}{' + rank' if rank else ''}", 0, **zero, bound="")
    extra = 0.0
    if rank:  # the thresholds (rank_thresholds): per 4,096-row chunk the target rows gathered (read, written, read
        # again by a batched dot beside the hidden rows), in ~6 torch launches
        chunks = -(-rows // 4_096)
        gathered = rows * hidden * elt * 4
        total.hbm_bytes += gathered
        total.hbm_ms += gathered / ceil.hbm_bps * 1e3
        total.ms += (gathered / ceil.hbm_bps + 6 * chunks * LAUNCH_S) * 1e3
        extra = rows * 4 + min(rows, 4_096) * hidden * elt  # thresholds, and a chunk's gathered rows
    slots = min(top_k, RUNNING_SLOTS)  # each split's running top-k; more is merged from the splits' candidates
    body = plan.lm_head_launches(rows, vocab, dtype, slots, SMS, set_size, rank, probes)
    tails = [plan.lm_head_tail(launch, vocab) for launch in body]
    for launch in [*body, *(t for t in tails if t is not None)]:
        bn, bv = launch.block_n, launch.tile_v
        tile_flops = 2.0 * bn * bv * hidden
        waves = -(-launch.programs // SMS)
        mma = waves * launch.tiles_per_split * tile_flops / (ceil.gemm_flops / SMS)
        tile_elems = bn * bv
        ops = EPILOGUE_OPS + (TOPK_PRUNE_OPS if slots else 0) + (RANK_OPS if rank else 0)
        per_program_alu = launch.tiles_per_split * tile_elems * ops
        # The running top-k merges the second accumulator, then the first, each as its even and then its odd columns.
        halves = [launch.block_v2 // 2] * 2 * bool(launch.block_v2) + [launch.block_v // 2] * 2
        swept = topk_pass_columns(slots, halves * launch.tiles_per_split)
        per_program_alu += 2 * swept * TOPK_PASS_OPS * bn
        per_program_exp = launch.tiles_per_split * tile_elems
        per_program_wait = 0.0
        if probes:  # the passes a tile (`probe_passes`): per pass a sweep of the tile and its rows' next ids
            passes = probe_passes(bn, bv, launch.columns, probes, distinct, crowded, vocab)
            per_program_alu += launch.tiles_per_split * passes * (bn * bv * PROBE_PASS_OPS + bn * PROBE_ROW_OPS)
            per_program_wait = launch.tiles_per_split * passes * PROBE_PASS_S
        alu = waves * (max(per_program_alu / (ALU_OPS / SMS), per_program_exp / (EXP_OPS / SMS)) + per_program_wait)
        weight_bytes = launch.columns * hidden * elt
        groups = -(-launch.row_blocks // launch.group)
        hbm = weight_bytes * groups + launch.rows * hidden * elt + launch.partial_bytes() * 2
        if probes:  # the ids read (each split its own, and a 32-byte sector at its start) and their logits written,
            # the starts and the passes read
            hbm += launch.rows * (probes * 8.0 + launch.splits * 36) + launch.programs * launch.tiles_per_split * 4.0
        l2 = launch.programs * launch.tiles_per_split * (bn + bv) * hidden * elt
        # The combine (torch): reads the partials and candidates once, a handful of small kernels; with a top-k
        # the candidates (value, id) are sorted by id and then by value (stable) and gathered: ~8 passes.
        select_bytes = 8 * launch.rows * (launch.splits + 1) * slots * 8
        combine_s = (launch.partial_bytes() * 2 + select_bytes) / ceil.hbm_bps
        combine_s += (6 + (1 if set_size else 0) + (8 if slots else 0)) * LAUNCH_S
        t = LAUNCH_S + max(mma + alu, hbm / ceil.hbm_bps, l2 / ceil.l2_bps) + combine_s
        total.launches += 1
        total.flops += waves * SMS * launch.tiles_per_split * tile_flops
        total.hbm_bytes += hbm
        total.l2_bytes += l2
        total.alu_ops += launch.programs * per_program_alu
        total.exp_ops += launch.programs * per_program_exp
        total.mma_ms += mma * 1e3
        total.alu_ms += alu * 1e3
        total.hbm_ms += hbm / ceil.hbm_bps * 1e3
        total.l2_ms += l2 / ceil.l2_bps * 1e3
        total.ms += t * 1e3
        extra = max(extra, launch.partial_bytes() + launch.rows * launch.splits * 8.0)  # + the combine's temporaries
    if probes:  # kernels/probe_logprobs.py's host side, per launch span (the kernels' passes are in their ALU time)
        for launch in body:
            moved = launch.rows * (probes * PROBE_HOST_BYTES + launch.splits * 4.0)
            total.hbm_bytes += moved
            total.hbm_ms += moved / ceil.hbm_bps * 1e3
            total.ms += (moved / ceil.hbm_bps + PROBE_HOST_LAUNCHES * LAUNCH_S) * 1e3
            extra = max(extra, launch.probe_bytes())
        layout = "crowded" if crowded else f"{distinct:,} distinct" if distinct else "any ids, |U| ~ V"
        total.case += f" + {probes} probes a position ({layout})"
    terms = {"tensor cores + epilogue": total.mma_ms + total.alu_ms, "HBM": total.hbm_ms, "L2": total.l2_ms}
    total.bound = max(terms, key=lambda name: terms[name])
    total.extra_bytes = extra
    return total


@dataclass(frozen=True)
class Admission:
    """What one row's candidate buffer does in the logits kernel, in expectation (`admission`)."""

    appended: float  # entries appended (value + id, 8 bytes each)
    appending_tiles: float  # tiles that append anything (each pays a prefix sum and masked stores per logit)
    compactions: float  # buffer compactions, the row's last one included
    compacted: float  # entries read by those compactions
    tile_selects: float  # tiles that alone held more than the free places (selected in registers)


def admission(k: int, vocab: int, block_v: int, buffer: int) -> Admission:
    """The buffer's expected work on a row whose large logits lie in random order along the vocabulary: a tile of
    w logits after a compaction at `seen` appends w * k / seen of them (theta is then the k-th best of the first
    `seen`); after a tile's own selection, w * k / w_tile (its k-th best). An adversarial row in ascending order
    appends every logit (a compaction each buffer - k appends)."""
    if not k:
        return Admission(0.0, 0.0, 0.0, 0.0, 0.0)
    rate, count, seen = 1.0, 0.0, 0
    appended = appending = compactions = compacted = selects = 0.0
    for start in range(0, vocab, block_v):
        w = min(block_v, vocab - start)
        n = w * rate
        if count + n > buffer:
            if count > k:
                compactions, compacted = compactions + 1, compacted + count
                rate, count = k / seen, float(k)
                n = w * rate
            if count + n > buffer:
                selects += 1
                rate, n = k / w, float(k)
        appending += 1.0 if rate >= 1.0 else -math.expm1(-n)  # some logit enters (Poisson)
        appended, count, seen = appended + n, count + n, seen + w
    if count > k:
        compactions, compacted = compactions + 1, compacted + count
    return Admission(appended, appending, compactions, compacted, selects)


# The logits kernel's CUDA-core work, counted from its code (a lead, not measured): per logit the online
# log-sum-exp (convert, column mask, max, subtract, scale for exp2, sum, the x * exp term's guard, select and
# multiply-add); per logit of a top-k launch the compare with theta and its count; per logit of a tile that
# appends the prefix sum (convert, scan, add the warps' offsets), the place, one address and two masked stores.
LOGITS_STATS_OPS = 9
ADMIT_OPS = 3
APPEND_OPS = 8


def select_ops(key_bits: int) -> tuple[int, int]:
    """(lane-operations per entry, reductions across the warps) of a compaction: two loads, a counting pass
    (compare, convert, add) per searched bit of the k-th value's key (16 for bf16 logits, 19 fp16, 32 fp32), the
    k best with ties by place (~10), their places (3), an address and two stores; a tile's own selection the same
    on its registers."""
    return 2 + key_bits * 3 + 10 + 3 + 3, key_bits + 4


# One reduction across a program's warps: 5 shuffles and 5 operations a warp, and a round trip through shared
# memory with a barrier (~4 instructions), per warp, in lane-operations.
REDUCE_OPS_PER_WARP = 14 * 32
STATS_REDUCTIONS = 4  # a tile's max, sum of exp, sum of x * exp, count entering (+1: the prefix sum's, appending)


def logits(rows: int, vocab: int, top_k: int, dtype: torch.dtype = torch.bfloat16, ceil: Ceilings = H200) -> Prediction:
    """One launch of persistent programs (`logits_launch`) that reads each logit once for every k: the online
    log-sum-exp, and with a top-k the candidate buffer's appends, compactions and tile selections (`admission`);
    then the host sorts the [N, k] (values in id order) by value and subtracts the log-sum-exp. The buffer (8 KiB a
    program, 4 MiB in all) lives in L2; its appends are also counted as written back to HBM once (an upper
    bound). The work is spread over the SMs as the programs are: the SM with the most rows sets the time."""
    tp = importlib.import_module("proctor.kernels.target_logprobs")
    launch = tp.logits_launch(rows, vocab, top_k, sms=SMS)
    elt = torch.empty(0, dtype=dtype).element_size()
    tiles = -(-vocab // launch.block_v)
    cols = tiles * launch.block_v
    reduce_ops = launch.num_warps * REDUCE_OPS_PER_WARP
    adm = admission(top_k, vocab, launch.block_v, launch.buffer)
    per_row = cols * LOGITS_STATS_OPS + tiles * STATS_REDUCTIONS * reduce_ops
    if top_k:
        per_row += cols * ADMIT_OPS + adm.appending_tiles * (launch.block_v * APPEND_OPS + reduce_ops)
        ops, reductions = select_ops(tp.KEY_BITS.get(dtype, 32))
        selected = adm.compactions * launch.buffer + adm.tile_selects * launch.block_v
        per_row += selected * ops + (adm.compactions + adm.tile_selects) * reductions * reduce_ops
    alu_ops = rows * per_row
    exp_ops = float(rows * (cols + tiles))
    # the busiest SM's share of the rows against an even share
    per_sm = -(-launch.programs // SMS) * launch.rows_per_program
    imbalance = per_sm / (rows / SMS) if rows else 1.0
    alu = max(alu_ops / ALU_OPS, exp_ops / EXP_OPS) * imbalance
    scratch = rows * adm.appended * 8
    hbm = rows * vocab * elt + rows * (8 + 12 + 8 * top_k) + scratch
    l2 = scratch + rows * (adm.compacted + adm.compactions * top_k) * 8 * 2
    combine_s = 0.0
    if top_k:  # sort (values, int64 order), the ids made int64 and gathered, the -inf check, minus the lse
        moved = rows * top_k * (SORT_PASSES * 8 + 20 + 12 + 8)
        combine_s = moved / ceil.hbm_bps + 6 * LAUNCH_S
    hbm_s, l2_s = hbm / ceil.hbm_bps, l2 / ceil.l2_bps
    ms = (LAUNCH_S + max(alu, hbm_s, l2_s) + combine_s) * 1e3
    terms = {"CUDA cores": alu, "HBM": hbm_s, "L2": l2_s}
    return Prediction(
        f"logits {rows}x{vocab} top-{top_k}",
        1,
        0.0,
        hbm,
        l2,
        alu_ops,
        exp_ops,
        0.0,
        alu * 1e3,
        hbm_s * 1e3,
        l2_s * 1e3,
        ms,
        float(2 * 4 * launch.programs * launch.buffer if top_k else 0),
        max(terms, key=lambda name: terms[name]),
    )


# Per-position probes, 16,384 positions x 128 ids: any ids (None, |U| ~ V: the general case), ids that overlap across
# positions (a student's top-k at neighbouring positions: 2k one topic, 8k a mixed batch, 32k many unrelated
# prompts; guesses), and crowded rows (each row's ids packed apart from its block's other rows': the most passes).
PROBE_LAYOUTS: tuple[tuple[int | None, bool], ...] = (
    (None, False),
    (2_048, False),
    (8_192, False),
    (32_768, False),
    (None, True),
)


def issue_targets(ceil: Ceilings = H200) -> list[Prediction]:
    """The issue's targets on one H200, each with its predicted time."""
    out = []
    p = logits(16_384, 151_936, 20, ceil=ceil)
    p.target_ms = 2.0
    out.append(p)
    for k in (0, 20):
        p = lm_head(16_384, 151_936, 4_096, k, ceil=ceil)
        p.target_ms = 29.5
        out.append(p)
    p = lm_head(256, 151_936, 4_096, 0, set_size=11, ceil=ceil)
    p.case = "probes / expected score, 11 tokens, " + p.case
    p.target_ms = 0.55
    out.append(p)
    return out


def report_cases(ceil: Ceilings = H200) -> list[Prediction]:
    """The issue's targets, then the few-row launches, the HTTP front's prompt log-probs, and the vocabularies
    users load (at 16,384 x 4,096, top-20)."""
    preds = issue_targets(ceil)
    preds += [lm_head(rows, 151_936, 4_096, 0, ceil=ceil) for rows in (1, 11)]
    preds += [lm_head(rows, 151_936, 4_096, 20, ceil=ceil, rank=True) for rows in (16_384, 11)]
    preds += [lm_head(16_384, vocab, 4_096, 20, ceil=ceil) for vocab in (32_000, 50_257, 128_256, 256_000)]
    # distillation's top-k (issue: top-100 <= 31 ms, top-256 <= 35 ms, logits top-256 <= 2.5 ms)
    for k, target in ((100, 31.0), (256, 35.0)):
        p = lm_head(16_384, 151_936, 4_096, k, ceil=ceil)
        p.target_ms = target
        preds.append(p)
    p = logits(16_384, 151_936, 256, ceil=ceil)
    p.target_ms = 2.5
    preds.append(p)
    top20_ms = lm_head(16_384, 151_936, 4_096, 20, ceil=ceil).ms
    for distinct, crowded in PROBE_LAYOUTS:  # issue: 128 probes a position <= 10 % over top-20
        p = lm_head(16_384, 151_936, 4_096, 20, ceil=ceil, probes=128, distinct=distinct, crowded=crowded)
        p.target_ms = round(1.1 * top20_ms, 2)
        preds.append(p)
    return preds


# What a Triton main loop and L2 may deliver on Hopper rather than the leads: cuBLAS-class 790 TFLOP/s is what an
# 8192^3 torch matmul reached; a Triton wgmma loop without TMA or warp specialisation usually lands 10-20 % lower.
# The predictions at the leads are lower bounds; these two bands are what the targets are judged against until a
# GPU run measures both rates (proctor.bench.kernels: "Triton main loop alone" and the L2 row of its ceilings).
BAND = (Ceilings(gemm_flops=700e12, l2_bps=8e12), Ceilings(gemm_flops=650e12, l2_bps=7e12))


def needed_rates(p: Prediction) -> tuple[float, float]:
    """(L2 bytes/s, tensor-core FLOP/s) at which the prediction would just meet its target, the other terms held."""
    assert p.target_ms is not None
    rest = p.ms - max(p.mma_ms + p.alu_ms, p.hbm_ms, p.l2_ms)  # launches and the combine
    budget_s = (p.target_ms - rest) / 1e3
    return p.l2_bytes / budget_s, p.flops / (budget_s - p.alu_ms / 1e3)


def _band_label(c: Ceilings) -> str:
    return f"{c.gemm_flops / 1e12:.0f} TFLOP/s, L2 {c.l2_bps / 1e12:.0f} TB/s"


def write_report(preds: list[Prediction], bands: list[list[Prediction]], stem: Path, command: str) -> None:
    """preds at the leads (lower bounds) and, per BAND entry, the same cases at its rates."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "date": dt.date.today().isoformat(),
        "command": command,
        "device": "H200 (predicted, not measured)",
        "ceilings": asdict(H200) | {"alu_ops": ALU_OPS, "exp_ops": EXP_OPS, "launch_s": LAUNCH_S},
        "bands": [asdict(c) for c in BAND],
        "predictions": [
            asdict(p)
            | {"lower_bound": True, "meets_target": p.meets_target}
            | {"band_ms": [b[i].ms for b in bands], "band_meets_target": [b[i].meets_target for b in bands]}
            | (
                dict(zip(("needed_l2_bps", "needed_gemm_flops"), needed_rates(p), strict=True))
                if p.flops and p.target_ms
                else {}
            )
            for i, p in enumerate(preds)
        ],
    }
    stem.with_name(stem.name + ".json").write_text(json.dumps(record, indent=2) + "\n")
    band_cols = " | ".join(f"ms at {_band_label(c)}" for c in BAND)
    lines = [
        "# Scoring kernels: cost model on one H200 (predictions, not measurements)",
        "",
        f"Command: `{command}` ({record['date']}). The leads: bf16 GEMM 790 TFLOP/s and copy 4.3 TB/s (measured on",
        "this project's H200s with torch), L2 10 TB/s (not measured), and a Triton main loop assumed to reach",
        "cuBLAS's rate with L2 feeding it at 10 TB/s at the same time: so **each prediction at the leads is a lower",
        "bound**, and the columns after it give the same model at a realistic band (the main loop's and L2's rates",
        "as named; copy 4.3 TB/s). The last columns give the rates a target needs (the other terms held). See",
        "bench/cost_model.py for what each term counts. The logits rows have no product and little L2 traffic, so",
        "their band is their lower bound; they are bound by CUDA-core work counted from the kernel's code (leads),",
        "and assume 4 programs an SM keep HBM busy, which only a GPU run can confirm.",
        "",
        f"| case | launches | GFLOP | HBM GB | L2 GB | tensor ms | CUDA-core ms | HBM ms | L2 ms | lower bound ms | "
        f"{band_cols} | target ms | needs L2 TB/s | needs main loop TFLOP/s | bound | extra MiB |",
        "|---" * (15 + len(BAND)) + "|",
    ]
    for i, p in enumerate(preds):
        target = "-" if p.target_ms is None else f"{p.target_ms:g}"
        band = " | ".join(f"{b[i].ms:.2f}{'' if b[i].meets_target else ' MISSED'}" for b in bands)
        need = ["-", "-"]
        if p.flops and p.target_ms is not None:  # the lm_head's rates; logits have no product
            l2, gemm = needed_rates(p)
            need = [f">= {l2 / 1e12:.1f}", f">= {gemm / 1e12:.0f}"]
        lines.append(
            f"| {p.case} | {p.launches} | {p.flops / 1e9:.0f} | {p.hbm_bytes / 1e9:.2f} | {p.l2_bytes / 1e9:.1f} | "
            f"{p.mma_ms:.2f} | {p.alu_ms:.2f} | {p.hbm_ms:.2f} | {p.l2_ms:.2f} | "
            f"{p.ms:.2f}{'' if p.meets_target else ' MISSED'} | {band} | {target} | {need[0]} | {need[1]} | "
            f"{p.bound} | {p.extra_bytes / 2**20:.1f} |"
        )
    lines += [
        "",
        "Probes (128 token ids a position, read from the lm_head's own tiles: kernels/probe_logprobs.py): no",
        "second product and no weight row read again; each tile costs one pass over its logits per probe the busiest",
        "row of its block has there (~1.9 a 192-column tile for any ids, ~1.5 over 2,048), a launch's probes a sort",
        "and a few passes on the host. Beside a top-20 the tiles stay 128 x (128 + 64), so the operand reads from L2",
        "are top-20's own. The target, +10 % over the same rates' top-20 (the bands' columns against their own",
        "top-20's), is judged for any ids (|U| ~ V), for ids that overlap across positions, and for crowded rows",
        "(each row's 128 ids packed in tiles no other row of its block probes: exact, the slowest layout).",
    ]
    stem.with_name(stem.name + ".md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write DIR/cost-model.{json,md} (default: dated, bench/results)")
    args = parser.parse_args(argv)
    preds = report_cases()
    bands = [report_cases(c) for c in BAND]  # each judged at its own rates (the probes' +10 % over its top-20)
    stem = args.out / "cost-model" if args.out else RESULTS / f"{dt.date.today().isoformat()}-cpu-cost-model"
    command = "python -m proctor.bench.cost_model " + " ".join(sys.argv[1:] if argv is None else argv)
    write_report(preds, bands, stem, command.strip())
    for i, p in enumerate(preds):
        at_band = " / ".join(f"{b[i].ms:.2f}" for b in bands)
        print(f"{p.case:<64} >= {p.ms:7.2f} ms, band {at_band} ms (target {p.target_ms}) {p.bound}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
