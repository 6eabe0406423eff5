"""hidden [N, H] x lm_head weight [V, H] -> log p(target) [N], entropy [N], optional top-k, float32.

Never materialises the [N, V] logits (the idea of Cut Cross-Entropy, our own code). One Triton program owns a block
of rows and a contiguous split of the vocabulary: tile by tile it computes the [BLOCK_N, BLOCK_V + BLOCK_V2] logits
on the tensor cores (two float32 accumulators) and folds them at once into per-row online statistics (running max,
rescaled sum of exp and of x * exp, the target's logit) and a running top-k (kernels/topk.py). Each program writes
one partial per row, so the extra memory is O(N * splits), and a small combine over the splits gives the
log-sum-exp, log-probs, entropies and the global top-k.

Launch shapes (`lm_head_launches`, kernels/lm_head_plan.py; also what bench/hopper.py compiles and
bench/cost_model.py costs): 128 x (128 + 128) x 64 tiles on 8 warps (wgmma) for many rows, two accumulators that
share each hidden block's loads and are folded one after the other (128 + 64 beside a running top-k); for a few rows
(RRM probes, one position per atom, <= 64) all rows in one 64-row block so the weight is read once, the vocabulary
split across the SMs. The number of splits is the one that fills whole waves of SMs; programs go row block fastest
within groups of GROUP row blocks, so the programs in flight share their weight tiles and hidden blocks in L2 (the
weight comes from HBM about once per group).

With a set of S token ids (an RRM's score tokens, `lm_head_set_logprobs_triton`) the program whose tile holds a
token also stores that token's logit for its rows, so the probes' log-probs need no second product. Per-position
probes (each row its own <= 128 ids, vLLM's prompt_logprob_token_ids) come out of the tiles alike: each row's ids
sorted and deduplicated on the host (kernels/probe_logprobs.py), a cursor a row walks them as its program walks the
vocabulary, and over each tile as many passes as the busiest of its rows has ids there (`_probes`); the log-probs
are those logits minus the combine's log-sum-exp. Beside a 32- or 64-slot top-k a launch with probes takes a
narrower second accumulator or none (`lm_head_plan._tile`: the passes' registers spill beside the wider one).

With `rank_out` (vLLM's ranks: the tokens at least as likely as the target, itself included) each row's target logit
is computed first, one row of the weight per row (a gather, not a product), and the tiles count the other logits at
or above it. Like vLLM, which ranks the logits its lm_head gives in the model's dtype, a 16-bit model's logits count
as rounded to that dtype, so its ties count in: the threshold is the least float32 that rounds to the target's
rounded logit or above (`rank_threshold`), and the kernel compares its float32 logits with it, at no cost per
logit. A logit within float32 accumulation error of that boundary (in float32, of the target's) may count either
way.

Ignore-index rows (target == ignore_index) get 0.0 log-prob and entropy.
"""

from __future__ import annotations

import os

import torch

from proctor.kernels.buffers import poisoned
from proctor.kernels.lm_head_plan import LmHeadLaunch, device_sms, lm_head_launches, lm_head_tail
from proctor.kernels.probe_logprobs import ProbeOrder, probe_logprobs, probe_order
from proctor.kernels.target_logprobs import target_logprobs_reference, target_ranks_reference
from proctor.kernels.topk_select import RUNNING_SLOTS, check_top_k, select_from_candidates, top_k_ties_by_id

try:
    import triton
    import triton.language as tl

    from proctor.kernels.topk import topk_init, topk_merge_pairs
except ImportError:  # Triton is optional: the reference serves CPU tensors
    triton = None
HAVE_TRITON = triton is not None

# Triton's CPU interpreter (3.9) returns garbage from tl.dot on bfloat16 operands (float16 is fine), so under
# TRITON_INTERPRET the kernel widens bf16 tiles to float32 before the dot. The products of two bf16 values are
# exact in float32 either way; on a GPU the dot runs on bf16 tensor cores with float32 accumulation.
_INTERPRETER_BF16_DOT = os.environ.get("TRITON_INTERPRET") == "1"

MAX_PROBES = 128  # token ids a position may probe (vLLM's prompt_logprob_token_ids allows 128)

# The kernel's integer arguments that it is not specialised on (see the kernel); bench/hopper.py compiles alike.
UNSPECIALISED = ["n_rows", "n_splits", "tiles_per_split", "group", "n_probes"]


Result = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]


# Rows of logits the reference's passes after the product take at once (at V 49,152 in float32: 85 rows): few
# enough MiB that each pass (log-sum-exp, top-k, rank count) reads them from cache, not from memory, and enough rows
# that the passes' thread-pool rounds stay few (each waits for its slowest thread: on a shared CPU, for a time slice).
# Measured on 2 shared cores, SmolLM2's V, 12,240 rows, top-20 and ranks (CPU s): 8 MiB 6.3-7.3 when quiet, 23 under
# load; 16 MiB 6.1-7.3 and 14; 32 MiB 7.2-8.1 and 11; the 1,024-row chunks whole 10.4-11.6.
CACHE_BYTES = 16 << 20


def lm_head_logprobs_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    top_k: int = 0,
    ignore_index: int = -100,
    rank_out: torch.Tensor | None = None,
    chunk_rows: int = 1024,
    entropy: bool = True,
    probes: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Result:
    """(target log-probs [N], entropy [N] (None unless `entropy`), top-k log-probs [N, k] or None, top-k ids [N, k]
    or None); with `rank_out` [N] (int64) also each target's rank, the tokens at least as likely as it (0 on
    ignore-index rows); with `probes` (ids [N, P], out [N, P]) each row's log-probs of its own P tokens.

    The logits reference applied to row chunks, so it never holds more than `chunk_rows x V` logits at once; each
    chunk's product in one matrix multiply, what follows it in blocks of rows that stay in cache (`CACHE_BYTES`).
    float64 inputs are computed in float64 (a ground truth for tests), anything else in float32.
    """
    compute = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    w = weight.to(compute)
    block = max(1, CACHE_BYTES // (weight.shape[0] * compute.itemsize))
    parts = []
    for s in range(0, hidden.shape[0], chunk_rows):
        logits = hidden[s : s + chunk_rows].to(compute) @ w.T
        for b in range(0, logits.shape[0], block):
            part = logits[b : b + block]
            rows = slice(s + b, s + b + part.shape[0])
            t = targets[rows]
            probe = (probes[0][rows], probes[1][rows]) if probes is not None else (None, None)
            parts.append(target_logprobs_reference(part, t, top_k, ignore_index, entropy, *probe))
            if rank_out is not None:  # ranked as the inputs' dtype gives the logits (vLLM's lm_head does)
                rank_out[rows] = target_ranks_reference(part.to(hidden.dtype), t, ignore_index)
    if not parts:
        empty = torch.empty(0, dtype=compute, device=hidden.device)
        return empty, empty if entropy else None, None, None
    return (
        torch.cat([p[0] for p in parts]),
        torch.cat([p[1] for p in parts if p[1] is not None]) if entropy else None,
        torch.cat([p[2] for p in parts if p[2] is not None]) if top_k else None,
        torch.cat([p[3] for p in parts if p[3] is not None]) if top_k else None,
    )


if triton is not None:

    @triton.jit  # type: ignore[untyped-decorator]
    def _operand(row_ptrs, ks, hidden, EVEN_H: tl.constexpr, UPCAST: tl.constexpr):  # type: ignore[no-untyped-def]
        """The [rows, BLOCK_H] block at columns ks of the rows that row_ptrs point at (zeros past H)."""
        if EVEN_H:
            x = tl.load(row_ptrs[:, None] + ks[None, :])
        else:
            x = tl.load(row_ptrs[:, None] + ks[None, :], (ks < hidden)[None, :], 0.0)
        if UPCAST:
            x = x.to(tl.float32)
        return x

    @triton.jit  # type: ignore[untyped-decorator]
    def _dot(acc, h, w, IEEE: tl.constexpr):  # type: ignore[no-untyped-def]
        """acc + h @ w.T: full float32 products for float32 operands (IEEE), tensor-core precision otherwise."""
        if IEEE:
            return acc + tl.dot(h, tl.trans(w), input_precision="ieee")
        return acc + tl.dot(h, tl.trans(w))

    @triton.jit  # type: ignore[untyped-decorator]
    def _fold(  # type: ignore[no-untyped-def]
        acc, col0, vocab, rows, row_ok, targets, thresholds, stats, ids_ptr, set_ptr,
        BLOCK_V: tl.constexpr, K_PAD: tl.constexpr, S: tl.constexpr, RANK: tl.constexpr,
    ):  # fmt: skip
        """Fold one [rows, BLOCK_V] block of logits (columns col0...) into the rows' online statistics, the set's
        logits, the running top-k and (RANK) the count of other logits at or above each row's threshold. Clamped
        columns past the vocabulary repeat the last real logit, so they leave the max alone; only their exp, their
        top-k candidacy and their count are masked."""
        run_max, sum_exp, sum_x_exp, target_logit, best_v, best_i, theta, above = stats
        cols = col0 + tl.arange(0, BLOCK_V)
        col_ok = cols < vocab
        new_max = tl.maximum(run_max, tl.max(acc, axis=1))
        rescale = tl.exp(run_max - new_max)  # exp(-inf) = 0 on the first tile: new_max is finite
        e = tl.where(col_ok[None, :], tl.exp(acc - new_max[:, None]), 0.0)
        sum_exp = sum_exp * rescale + tl.sum(e, axis=1)
        sum_x_exp = sum_x_exp * rescale + tl.sum(e * acc, axis=1)
        target_logit += tl.sum(tl.where(cols[None, :] == targets[:, None], acc, 0.0), axis=1)
        if RANK:
            counted = (acc >= thresholds[:, None]) & col_ok[None, :] & (cols[None, :] != targets[:, None])
            above += tl.sum(counted.to(tl.float32), axis=1)  # exact: counts stay far below 2**24
        for s in tl.static_range(S):  # the set's tokens: each lies in one block, so one program writes it
            token = tl.load(ids_ptr + s)
            if (token >= col0) & (token < col0 + BLOCK_V):
                picked = tl.sum(tl.where(cols[None, :] == token, acc, 0.0), axis=1)
                tl.store(set_ptr + rows * S + s, picked, row_ok)
        if K_PAD > 0:
            x = tl.where(col_ok[None, :], acc, -float("inf"))
            best_v, best_i, theta = topk_merge_pairs(x, col0, best_v, best_i, theta, K_PAD, BLOCK_V)
        return new_max, sum_exp, sum_x_exp, target_logit, best_v, best_i, theta, above

    @triton.jit  # type: ignore[untyped-decorator]
    def _probes(  # type: ignore[no-untyped-def]
        acc, acc2, col0, end, vocab, rows, cursor, probe, passes, probe_ids_ptr, probe_out_ptr, n_probes,
        BLOCK_V: tl.constexpr, BLOCK_V2: tl.constexpr,
    ):  # fmt: skip
        """Store the logits of the rows' probes in one tile (columns col0... of acc, then of acc2, up to `end`), each
        at its row's cursor, in `passes` passes (the most probes one of the rows has in the tile, counted on the
        host: a count found here would take a reduction across the warps, and its registers, each pass). `probe` is
        each row's next id (`vocab`, which matches no column, past its last); returns the moved cursor and the id
        now at it."""
        for _ in range(passes):
            hit = (probe >= col0) & (probe < end)
            picked = tl.sum(tl.where(col0 + tl.arange(0, BLOCK_V)[None, :] == probe[:, None], acc, 0.0), axis=1)
            if BLOCK_V2 > 0:
                cols2 = col0 + BLOCK_V + tl.arange(0, BLOCK_V2)
                picked += tl.sum(tl.where(cols2[None, :] == probe[:, None], acc2, 0.0), axis=1)
            tl.store(probe_out_ptr + rows * n_probes + cursor, picked, hit)
            cursor += hit.to(tl.int32)
            more = hit & (cursor < n_probes)
            probe = tl.where(hit, tl.load(probe_ids_ptr + rows * n_probes + cursor, more, vocab), probe)
        return cursor, probe

    # The grid's integers (rows, splits, tiles a split, row blocks a group) only index and bound the loop and the
    # partials' stores: not specialised on, so one compiled kernel serves every row count and vocabulary of a tile,
    # dtype and top-k (the vocabulary and H keep their divisibility-by-16 hints: the weight's loads and the column
    # masks use them).
    @triton.jit(do_not_specialize=UNSPECIALISED)  # type: ignore[untyped-decorator]
    def _lm_head_kernel(  # type: ignore[no-untyped-def]
        h_ptr,
        w_ptr,
        t_ptr,
        thr_ptr,
        part_ptr,
        topv_ptr,
        topi_ptr,
        ids_ptr,
        set_ptr,
        probe_ids_ptr,
        probe_start_ptr,
        probe_pass_ptr,
        probe_out_ptr,
        n_rows,
        vocab,
        hidden,
        stride_h,
        stride_w,
        n_splits,
        tiles_per_split,
        group,
        n_probes,
        BLOCK_N: tl.constexpr,
        BLOCK_V: tl.constexpr,
        BLOCK_V2: tl.constexpr,
        BLOCK_H: tl.constexpr,
        EVEN_H: tl.constexpr,
        K: tl.constexpr,
        K_PAD: tl.constexpr,
        S: tl.constexpr,
        RANK: tl.constexpr,
        PROBES: tl.constexpr,
        IEEE: tl.constexpr,
        UPCAST: tl.constexpr,
        EPILOGUE: tl.constexpr,
    ):
        # Program order: groups of `group` row blocks; inside a group the row block varies fastest, so the programs
        # in flight read the same few weight tiles and hidden blocks (L2 hits, not HBM re-reads).
        pid = tl.program_id(0)
        row_blocks = tl.cdiv(n_rows, BLOCK_N)
        per_group = group * n_splits
        first = (pid // per_group) * group
        in_group = tl.minimum(row_blocks - first, group)
        rb = first + (pid % per_group) % in_group
        split = (pid % per_group) // in_group

        rows = rb * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < n_rows
        # Out-of-range rows and columns load the last real one (no load masks: plain vector loads); their logits
        # are masked in _fold (columns) or never stored (rows).
        h_rows = h_ptr + tl.minimum(rows, n_rows - 1).to(tl.int64) * stride_h
        targets = tl.load(t_ptr + rows, row_ok, -1).to(tl.int32)
        run_max = tl.full((BLOCK_N,), -float("inf"), tl.float32)
        zero = tl.zeros((BLOCK_N,), tl.float32)
        if K_PAD > 0:
            best_v, best_i, theta = topk_init(BLOCK_N, K, K_PAD)
        else:
            best_v, best_i, theta = zero, zero, zero
        thresholds = tl.load(thr_ptr + rows, row_ok, float("inf")) if RANK else zero
        stats = (run_max, zero, zero, zero, best_v, best_i, theta, zero)
        # PROBES: each row's distinct probe ids, sorted (host-side, kernels/probe_logprobs.py); `cursor` the place
        # of its next one (from its split's first), `probe` that id (`vocab`, matching no column, past its last).
        if PROBES:
            cursor = tl.load(probe_start_ptr + rows * n_splits + split, row_ok, 0)
            probe = tl.load(probe_ids_ptr + rows * n_probes + cursor, row_ok & (cursor < n_probes), vocab)
        # A tile is BLOCK_V columns, and BLOCK_V2 more that share its hidden block's loads (128 x (128 + 128): three
        # quarters of a 128 x 128 tiling's operand reads per logit, 128 x (128 + 64) five sixths, without the spills
        # of one 128 x 256 accumulator beside its epilogue).
        TILE_V: tl.constexpr = BLOCK_V + BLOCK_V2
        first_tile = split * tiles_per_split
        last_tile = tl.minimum(first_tile + tiles_per_split, tl.cdiv(vocab, TILE_V))
        for tile in range(first_tile, last_tile):
            col0 = tile * TILE_V
            w_rows = w_ptr + tl.minimum(col0 + tl.arange(0, BLOCK_V), vocab - 1).to(tl.int64) * stride_w
            acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
            if BLOCK_V2 > 0:
                w2_rows = w_ptr + tl.minimum(col0 + BLOCK_V + tl.arange(0, BLOCK_V2), vocab - 1).to(tl.int64) * stride_w
                acc2 = tl.zeros((BLOCK_N, BLOCK_V2), dtype=tl.float32)
            for k0 in range(0, hidden, BLOCK_H):
                ks = k0 + tl.arange(0, BLOCK_H)
                h = _operand(h_rows, ks, hidden, EVEN_H, UPCAST)
                acc = _dot(acc, h, _operand(w_rows, ks, hidden, EVEN_H, UPCAST), IEEE or UPCAST)
                if BLOCK_V2 > 0:
                    acc2 = _dot(acc2, h, _operand(w2_rows, ks, hidden, EVEN_H, UPCAST), IEEE or UPCAST)
            if PROBES:
                passes = tl.load(probe_pass_ptr + rb * tl.cdiv(vocab, TILE_V) + tile)
                cursor, probe = _probes(
                    acc, acc2 if BLOCK_V2 > 0 else acc, col0, tl.minimum(col0 + TILE_V, vocab), vocab, rows, cursor,
                    probe, passes, probe_ids_ptr, probe_out_ptr, n_probes, BLOCK_V, BLOCK_V2,
                )  # fmt: skip
            if EPILOGUE:
                if BLOCK_V2 > 0:  # the narrower block first: the wider one's merge then has nothing beside it
                    stats = _fold(
                        acc2, col0 + BLOCK_V, vocab, rows, row_ok, targets, thresholds, stats, ids_ptr, set_ptr,
                        BLOCK_V2, K_PAD, S, RANK,
                    )  # fmt: skip
                stats = _fold(
                    acc, col0, vocab, rows, row_ok, targets, thresholds, stats, ids_ptr, set_ptr, BLOCK_V, K_PAD, S,
                    RANK,
                )  # fmt: skip
            else:  # the main loop alone (`lm_head_main_loop_triton`): a row sum keeps the products live
                run_max, sum_exp, sum_x_exp, target_logit, best_v, best_i, theta, above = stats
                sum_exp += tl.sum(acc, axis=1)
                if BLOCK_V2 > 0:
                    sum_exp += tl.sum(acc2, axis=1)
                stats = (run_max, sum_exp, sum_x_exp, target_logit, best_v, best_i, theta, above)
        run_max, sum_exp, sum_x_exp, target_logit, best_v, best_i, theta, above = stats
        plane = n_rows * n_splits
        out = rows * n_splits + split
        tl.store(part_ptr + out, run_max, row_ok)
        tl.store(part_ptr + plane + out, sum_exp, row_ok)
        tl.store(part_ptr + 2 * plane + out, sum_x_exp, row_ok)
        tl.store(part_ptr + 3 * plane + out, target_logit, row_ok)
        if RANK:
            tl.store(part_ptr + 4 * plane + out, above, row_ok)
        if K_PAD > 0:
            slots = tl.arange(0, K_PAD)
            cand = out[:, None] * K + slots[None, :]
            keep = row_ok[:, None] & (slots[None, :] < K)
            tl.store(topv_ptr + cand, best_v, keep)
            tl.store(topi_ptr + cand, best_i, keep)


# the tensor arguments
POINTERS = (
    "h_ptr", "w_ptr", "t_ptr", "thr_ptr", "part_ptr", "topv_ptr", "topi_ptr", "ids_ptr", "set_ptr", "probe_ids_ptr",
    "probe_start_ptr", "probe_pass_ptr", "probe_out_ptr",
)  # fmt: skip


def kernel_arguments(
    launch: LmHeadLaunch, hidden: int, stride_h: int, stride_w: int, dtype: torch.dtype, epilogue: bool = True
) -> tuple[dict[str, int], dict[str, object]]:
    """(integer arguments, constexprs) of one launch: what `_launch` passes, and what bench/hopper.py compiles."""
    ints = {
        "n_rows": launch.rows,
        "vocab": launch.columns,
        "hidden": hidden,
        "stride_h": stride_h,
        "stride_w": stride_w,
        "n_splits": launch.splits,
        "tiles_per_split": launch.tiles_per_split,
        "group": launch.group,
        "n_probes": launch.probes,
    }
    consts: dict[str, object] = {
        "BLOCK_N": launch.block_n,
        "BLOCK_V": launch.block_v,
        "BLOCK_V2": launch.block_v2,
        "BLOCK_H": launch.block_h,
        "EVEN_H": hidden % launch.block_h == 0,
        "K": launch.top_k,
        "K_PAD": launch.k_pad,
        "S": launch.set_size,
        "RANK": launch.rank,
        "PROBES": launch.probes > 0,
        "IEEE": dtype == torch.float32,
        "UPCAST": _INTERPRETER_BF16_DOT and dtype == torch.bfloat16,
        "EPILOGUE": epilogue,
    }
    return ints, consts


Partials = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _local(ids: torch.Tensor, launch: LmHeadLaunch) -> torch.Tensor:
    """Token ids as columns of the launch's own weight rows; -1 (no column) for those outside them, which would
    otherwise meet the repeated last row in its last tile's columns past its end."""
    local = ids - launch.col0
    return torch.where((local >= 0) & (local < launch.columns), local, -1).to(torch.int32)


# a launch's probe ids (its own columns), each row's start in each split, each row block's passes a tile, the logits
Probe = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _probe(order: ProbeOrder, launch: LmHeadLaunch, out: torch.Tensor) -> Probe:
    """The probes' arguments of one launch (`ProbeOrder.starts`, `ProbeOrder.passes`) and the logits' buffer."""
    per = launch.tiles_per_split * launch.tile_v
    firsts = [launch.col0 + s * per for s in range(launch.splits)]
    ids = order.ids - launch.col0 if launch.col0 else order.ids
    return ids, order.starts(firsts), order.passes(launch.col0, launch.columns, launch.tile_v, launch.block_n), out


def _launch_one(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    launch: LmHeadLaunch,
    token_ids: torch.Tensor | None,
    thresholds: torch.Tensor | None,
    epilogue: bool = True,
    probe: Probe | None = None,
) -> Partials:
    """Run one launch over its columns (weight rows col0...): its partials, top-k candidates (ids of the whole
    vocabulary) and the set's logits (those of its columns; the others as they were poisoned); with `probe` the
    logits of the probes in its columns go to their slots in its buffer."""
    n, h = hidden.shape
    dev = hidden.device
    part = poisoned(4 + launch.rank, n, launch.splits, device=dev)
    k = launch.top_k
    top_v = poisoned(n, launch.splits * max(k, 1), device=dev)
    top_i = poisoned(n, launch.splits * max(k, 1), device=dev, dtype=torch.int32)
    ids = _local(token_ids, launch) if token_ids is not None else torch.zeros(1, dtype=torch.int32, device=dev)
    set_logits = poisoned(n, max(launch.set_size, 1), device=dev)
    ints, consts = kernel_arguments(launch, h, hidden.stride(0), weight.stride(0), hidden.dtype, epilogue)
    thr = thresholds if thresholds is not None else set_logits  # not read without a rank
    probe_ids, probe_starts, probe_passes, probe_out = probe if probe is not None else (ids, ids, ids, set_logits)
    cols = weight[launch.col0 : launch.col0 + launch.columns]
    _lm_head_kernel[(launch.programs,)](
        hidden, cols, _local(targets, launch), thr, part, top_v, top_i, ids, set_logits, probe_ids, probe_starts,
        probe_passes, probe_out, **ints, **consts, num_warps=launch.num_warps, num_stages=launch.num_stages,
    )  # fmt: skip
    return part, top_v, top_i + launch.col0 if launch.col0 else top_i, set_logits


def _launch(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    launch: LmHeadLaunch,
    token_ids: torch.Tensor | None = None,
    thresholds: torch.Tensor | None = None,
    epilogue: bool = True,
    probes: tuple[ProbeOrder, torch.Tensor] | None = None,
) -> Partials:
    """Run a body launch and its tail (`lm_head_tail`): (partials [4, rows, splits] and with a rank the count at
    or above `thresholds` [rows] as a fifth plane, top-k values [rows, splits * k], ids [rows, splits * k], the
    set's logits [rows, S]); the tail's are one more split. With `probes` (their order, a [rows, P] buffer) each
    launch writes the logits of the probes in its columns to their slots in the buffer."""
    body = _launch_one(
        hidden, weight, targets, launch, token_ids, thresholds, epilogue,
        None if probes is None else _probe(probes[0], launch, probes[1]),
    )  # fmt: skip
    tail_launch = lm_head_tail(launch, weight.shape[0])
    if tail_launch is None:
        return body
    tail = _launch_one(
        hidden, weight, targets, tail_launch, token_ids, thresholds, epilogue,
        None if probes is None else _probe(probes[0], tail_launch, probes[1]),
    )  # fmt: skip
    set_logits = body[3]
    if token_ids is not None:
        set_logits = torch.where(token_ids[None, :] < tail_launch.col0, body[3], tail[3])
    return (
        torch.cat([body[0], tail[0]], 2),
        torch.cat([body[1], tail[1]], 1),
        torch.cat([body[2], tail[2]], 1),
        set_logits,
    )


def combine(part: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-sum-exp [rows], sum over the splits of x * p) from the per-split partials."""
    run_max, sum_exp, sum_x_exp = part[0], part[1], part[2]
    row_max = run_max.max(dim=1).values
    scale = torch.exp(run_max - row_max[:, None])
    total = (sum_exp * scale).sum(dim=1)
    return row_max + torch.log(total), (sum_x_exp * scale).sum(dim=1) / total


def rank_threshold(logit: torch.Tensor) -> torch.Tensor:
    """The least float32 x that rounds (to nearest, ties to even) to `logit`, a 16-bit value, or above: a float32
    x >= it exactly when x in that dtype >= `logit`. float32 logits are their own threshold."""
    if logit.dtype == torch.float32:
        return logit
    bits = logit.view(torch.int16).int()
    magnitude_zero = (bits & 0x7FFF) == 0
    # the next value down: -0 and +0 step to the least negative subnormal; negatives grow in magnitude
    below = torch.where(magnitude_zero, torch.full_like(bits, -0x7FFF), torch.where(bits < 0, bits + 1, bits - 1))
    mid = ((below.to(torch.int16).view(logit.dtype).double() + logit.double()) / 2).float()  # exact in float32
    odd = (bits & 1) == 1  # a tie at mid rounds to the even one of the two: to `logit` only if it is even
    return torch.where(odd, torch.nextafter(mid, torch.full_like(mid, float("inf"))), mid)


def rank_thresholds(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int, chunk_rows: int = 4096
) -> torch.Tensor:
    """Each row's rank threshold [N] (float32; +inf on ignore-index rows): its target logit as the inputs' dtype
    gives it (a batched dot with float32 accumulation, rounded as a 16-bit lm_head rounds its logits), through
    `rank_threshold`. One weight row gathered per row, in chunks (4,096 rows x H = 32 MiB at H 4,096 in 16 bits)."""
    out = torch.full((hidden.shape[0],), float("inf"), dtype=torch.float32, device=hidden.device)
    for s in range(0, hidden.shape[0], chunk_rows):
        t = targets[s : s + chunk_rows]
        keep = t != ignore_index
        rows = weight[torch.where(keep, t, 0)]
        logit = torch.bmm(hidden[s : s + chunk_rows, None, :], rows[:, :, None])[:, 0, 0]
        out[s : s + chunk_rows] = torch.where(keep, rank_threshold(logit), float("inf"))
    return out


def _check_targets(targets: torch.Tensor, vocab: int, ignore_index: int) -> None:
    # One host sync a call, against a clamped load that would give an out-of-range target the last word's logit.
    bad = ((targets < 0) | (targets >= vocab)) & (targets != ignore_index)
    if bool(bad.any()):
        raise ValueError(f"targets must lie in [0, {vocab}) or be ignore_index ({ignore_index}): got {targets[bad][0]}")


def _check_rank_out(rank_out: torch.Tensor | None, hidden: torch.Tensor) -> None:
    if rank_out is not None and (rank_out.shape != (hidden.shape[0],) or rank_out.dtype != torch.int64):
        raise ValueError(
            f"rank_out must be an int64 [{hidden.shape[0]}] tensor, got {rank_out.dtype} {tuple(rank_out.shape)}"
        )


def _check_probes(probes: tuple[torch.Tensor, torch.Tensor] | None, hidden: torch.Tensor, vocab: int) -> None:
    if probes is None:
        return
    ids, out = probes
    if ids.ndim != 2 or ids.shape[0] != hidden.shape[0] or ids.shape[1] > MAX_PROBES or out.shape != ids.shape:
        raise ValueError(
            f"probes must be ids and out [{hidden.shape[0]}, P <= {MAX_PROBES}], got {tuple(ids.shape)}, "
            f"{tuple(out.shape)}"
        )
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(f"probe ids must lie in [0, {vocab}), got {int(ids.min())}..{int(ids.max())}")


def _check_inputs(hidden: torch.Tensor, weight: torch.Tensor, top_k: int) -> None:
    if triton is None:
        raise RuntimeError("Triton is not installed")
    if hidden.ndim != 2 or weight.ndim != 2 or hidden.shape[1] != weight.shape[1]:
        shapes = f"{tuple(hidden.shape)}, {tuple(weight.shape)}"
        raise ValueError(f"hidden [N, H] and weight [V, H] must agree on H: {shapes}")
    if hidden.stride(1) != 1 or weight.stride(1) != 1:
        raise ValueError("hidden and weight must be row-major")
    check_top_k(top_k, weight.shape[0])


def lm_head_logprobs_triton(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    top_k: int = 0,
    ignore_index: int = -100,
    rank_out: torch.Tensor | None = None,
    entropy: bool = True,
    probes: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Result:
    _check_inputs(hidden, weight, top_k)
    _check_targets(targets, weight.shape[0], ignore_index)
    _check_rank_out(rank_out, hidden)
    _check_probes(probes, hidden, weight.shape[0])
    thresholds = rank_thresholds(hidden, weight, targets, ignore_index) if rank_out is not None else None
    lps, ents, vals, ids, lses, doubts = [], [], [], [], [], []
    start = 0
    slots = min(top_k, RUNNING_SLOTS)  # each split's running top-k; past it, the splits' candidates are merged
    vocab, width = weight.shape[0], 0 if probes is None else probes[0].shape[1]
    launches = lm_head_launches(
        hidden.shape[0], vocab, hidden.dtype, slots, device_sms(hidden.device), rank=rank_out is not None, probes=width
    )
    for launch in launches:
        span = slice(start, start + launch.rows)
        start += launch.rows
        h, t = hidden[span], targets[span]
        order = None
        if probes is not None:
            order = probe_order(probes[0][span], vocab)
            probe_logits = poisoned(launch.rows, width, device=hidden.device)
        part, top_v, top_i, _ = _launch(
            h, weight, t, launch, thresholds=None if thresholds is None else thresholds[span],
            probes=None if order is None else (order, probe_logits),
        )  # fmt: skip
        lse, mean_x = combine(part)
        keep = t != ignore_index
        if rank_out is not None:
            rank_out[span] = torch.where(keep, part[4].sum(dim=1) + 1, 0).long()
        lps.append(torch.where(keep, part[3].sum(dim=1) - lse, 0.0))
        if probes is not None and order is not None:
            probes[1][span] = probe_logprobs(probe_logits, order, lse)
        ents.append(torch.where(keep, lse - mean_x, 0.0))
        if top_k:
            v, i, unsure = select_from_candidates(top_v, top_i.long(), slots, top_k)
            vals.append(v - lse[:, None])
            ids.append(i)
            lses.append(lse)
            doubts.append(unsure)
    if doubts and bool(torch.cat(doubts).any()):  # one host sync a call
        at = torch.cat(doubts).nonzero()[:, 0]
        vals, ids = [torch.cat(vals)], [torch.cat(ids)]
        exact, ids[0][at] = _exact_top_k(hidden[at], weight, top_k)
        vals[0][at] = exact - torch.cat(lses)[at, None]
    if not lps:
        empty = torch.empty(0, dtype=torch.float32, device=hidden.device)
        return empty, empty if entropy else None, None, None
    return (
        torch.cat(lps),
        torch.cat(ents) if entropy else None,
        torch.cat(vals) if top_k else None,
        torch.cat(ids) if top_k else None,
    )


def _exact_top_k(
    hidden: torch.Tensor, weight: torch.Tensor, k: int, chunk_rows: int = 64, chunk_cols: int = 8192
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best float32 logits of a few rows and their ids, ties by id, from the rows' own logits: at most
    chunk_rows x V logits and one chunk_cols x H float32 slice of the weight at a time."""
    vals, ids = [], []
    for s in range(0, hidden.shape[0], chunk_rows):
        h = hidden[s : s + chunk_rows].float()
        logits = torch.cat([h @ weight[c : c + chunk_cols].float().T for c in range(0, weight.shape[0], chunk_cols)], 1)
        v, i = top_k_ties_by_id(logits, k)
        vals.append(v)
        ids.append(i)
    return torch.cat(vals), torch.cat(ids)


def lm_head_set_logprobs_triton(hidden: torch.Tensor, weight: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """log p(token | row) [R, S] float32 for a set of tokens shared by every row (an RRM's score tokens), in one
    launch: the set's logits come out of the same tiles as the log-sum-exp, without the [R, V] logits."""
    _check_inputs(hidden, weight, 0)
    vocab = weight.shape[0]
    if token_ids.ndim != 1 or not token_ids.numel():
        raise ValueError(f"token_ids must be a non-empty 1-D tensor, got shape {tuple(token_ids.shape)}")
    if int(token_ids.min()) < 0 or int(token_ids.max()) >= vocab:
        raise ValueError(f"token_ids must lie in [0, {vocab}), got {token_ids.min()}..{token_ids.max()}")
    ignored = torch.full((hidden.shape[0],), -100, dtype=torch.int64, device=hidden.device)
    sets = len(token_ids)
    out, start = [], 0
    for launch in lm_head_launches(hidden.shape[0], vocab, hidden.dtype, 0, device_sms(hidden.device), sets):
        rows = slice(start, start + launch.rows)
        part, _, _, set_logits = _launch(hidden[rows], weight, ignored[rows], launch, token_ids)
        start += launch.rows
        out.append(set_logits - combine(part)[0][:, None])
    return torch.cat(out) if out else torch.empty(0, sets, dtype=torch.float32, device=hidden.device)


def lm_head_main_loop_triton(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The top-0 launches with the epilogue switched off: each row's sum of its logits per split [rows, splits]
    (the tail's as one more).
    Not a score: the GPU check times it to measure the Triton main loop's own rate, which the cost model's lead
    (cuBLAS's 790 TFLOP/s) assumes."""
    _check_inputs(hidden, weight, 0)
    ignored = torch.full((hidden.shape[0],), -100, dtype=torch.int64, device=hidden.device)
    out, start = [], 0
    for launch in lm_head_launches(hidden.shape[0], weight.shape[0], hidden.dtype, 0, device_sms(hidden.device)):
        rows = slice(start, start + launch.rows)
        start += launch.rows
        out.append(_launch(hidden[rows], weight, ignored[rows], launch, epilogue=False)[0][1])
    return torch.cat(out)


def lm_head_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    top_k: int = 0,
    ignore_index: int = -100,
    rank_out: torch.Tensor | None = None,
    entropy: bool = True,
    probes: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Result:
    """Dispatcher: the Triton kernel on CUDA tensors, the reference elsewhere. With `rank_out` (int64 [N]) each
    target's rank is written there: the tokens at least as likely as it, itself included, as vLLM ranks a token.
    Without `entropy` the entropies are not computed (None). With `probes` (ids [N, P <= 128] int64, out [N, P]
    float32) each row's log-probs of its own P token ids are written to out, from the same pass's log-sum-exp."""
    if hidden.is_cuda and triton is not None:
        return lm_head_logprobs_triton(hidden, weight, targets, top_k, ignore_index, rank_out, entropy, probes)
    _check_probes(probes, hidden, weight.shape[0])
    return lm_head_logprobs_reference(
        hidden, weight, targets, top_k, ignore_index, rank_out, entropy=entropy, probes=probes
    )
