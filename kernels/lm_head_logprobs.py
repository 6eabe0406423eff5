"""hidden [N, H] x lm_head weight [V, H] -> log p(target) [N], entropy [N], optional top-k, float32.

Never materialises the [N, V] logits (the idea of Cut Cross-Entropy, our own code). The Triton path is a
split-V GEMM: program (row block, vocab tile) computes its [BLOCK_N, BLOCK_V] logits tile in float32 registers
and reduces it at once to per-row partials (tile max, sum of exp, sum of x * exp, the target's logit when the
target falls in the tile, and the tile's top-k). A cheap combine over the V / BLOCK_V tiles gives the log-sum-exp,
log-probs, entropies and the global top-k. Extra memory: O(N * V / BLOCK_V), not O(N * V); rows are processed in
chunks when top-k is asked for, to bound its candidates.

Ignore-index rows (target == ignore_index) get 0.0 log-prob and entropy.
"""

from __future__ import annotations

import os

import torch

from proctor.kernels.buffers import poisoned
from proctor.kernels.target_logprobs import target_logprobs_reference

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is optional: the reference serves CPU tensors
    triton = None
HAVE_TRITON = triton is not None

# Triton's CPU interpreter (3.9) returns garbage from tl.dot on bfloat16 operands (float16 is fine), so under
# TRITON_INTERPRET the kernel widens bf16 tiles to float32 before the dot. The products of two bf16 values are
# exact in float32 either way; on a GPU the dot runs on bf16 tensor cores with float32 accumulation.
_INTERPRETER_BF16_DOT = os.environ.get("TRITON_INTERPRET") == "1"

Result = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]


def lm_head_logprobs_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    top_k: int = 0,
    ignore_index: int = -100,
    chunk_rows: int = 1024,
) -> Result:
    """(target log-probs [N], entropy [N], top-k log-probs [N, k] or None, top-k ids [N, k] or None).

    The logits reference applied to row chunks, so it never holds more than `chunk_rows x V` logits at once.
    float64 inputs are computed in float64 (a ground truth for tests), anything else in float32.
    """
    compute = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    w = weight.to(compute)
    parts = [
        target_logprobs_reference(
            hidden[s : s + chunk_rows].to(compute) @ w.T, targets[s : s + chunk_rows], top_k, ignore_index
        )
        for s in range(0, hidden.shape[0], chunk_rows)
    ]
    if not parts:
        empty = torch.empty(0, dtype=compute, device=hidden.device)
        return empty, empty, None, None
    logprob, entropy = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    if not top_k:
        return logprob, entropy, None, None
    return (
        logprob,
        entropy,
        torch.cat([p[2] for p in parts if p[2] is not None]),
        torch.cat([p[3] for p in parts if p[3] is not None]),
    )


if triton is not None:

    @triton.jit  # type: ignore[untyped-decorator]
    def _partials_kernel(  # type: ignore[no-untyped-def]
        h_ptr,
        w_ptr,
        t_ptr,
        max_ptr,
        sum_ptr,
        xsum_ptr,
        tgt_ptr,
        topv_ptr,
        topi_ptr,
        n_rows,
        vocab,
        hidden,
        n_tiles,
        stride_h,
        stride_w,
        BLOCK_N: tl.constexpr,
        BLOCK_V: tl.constexpr,
        BLOCK_H: tl.constexpr,
        K_PAD: tl.constexpr,
        IEEE: tl.constexpr,
        UPCAST: tl.constexpr,
    ):
        pid_n = tl.program_id(0)
        pid_v = tl.program_id(1)
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
        row_ok = rows < n_rows
        col_ok = cols < vocab
        acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
        for k0 in range(0, hidden, BLOCK_H):
            ks = k0 + tl.arange(0, BLOCK_H)
            k_ok = ks < hidden
            h = tl.load(
                h_ptr + rows[:, None].to(tl.int64) * stride_h + ks[None, :], row_ok[:, None] & k_ok[None, :], 0.0
            )
            w = tl.load(
                w_ptr + cols[:, None].to(tl.int64) * stride_w + ks[None, :], col_ok[:, None] & k_ok[None, :], 0.0
            )
            if UPCAST:
                h = h.to(tl.float32)
                w = w.to(tl.float32)
            if IEEE or UPCAST:
                acc += tl.dot(h, tl.trans(w), input_precision="ieee")
            else:
                acc += tl.dot(h, tl.trans(w))
        x = tl.where(col_ok[None, :], acc, -float("inf"))
        tile_max = tl.max(x, axis=1)
        e = tl.where(col_ok[None, :], tl.exp(x - tile_max[:, None]), 0.0)
        targets = tl.load(t_ptr + rows, row_ok, -1).to(tl.int64)
        hit = cols[None, :].to(tl.int64) == targets[:, None]
        out = rows.to(tl.int64) * n_tiles + pid_v
        tl.store(max_ptr + out, tile_max, row_ok)
        tl.store(sum_ptr + out, tl.sum(e, axis=1), row_ok)
        tl.store(xsum_ptr + out, tl.sum(e * tl.where(col_ok[None, :], x, 0.0), axis=1), row_ok)
        tl.store(tgt_ptr + out, tl.sum(tl.where(hit, x, 0.0), axis=1), row_ok & (tl.sum(hit.to(tl.int32), axis=1) > 0))
        if K_PAD > 0:
            # The tile's top K_PAD per row, by repeated arg-max (K_PAD is small: <= 64).
            slots = tl.arange(0, K_PAD)
            best_v = tl.full((BLOCK_N, K_PAD), -float("inf"), tl.float32)
            best_i = tl.zeros((BLOCK_N, K_PAD), tl.int32)
            cand = x
            for j in range(K_PAD):
                m = tl.max(cand, axis=1)
                a = tl.argmax(cand, axis=1)
                best_v = tl.where(slots[None, :] == j, m[:, None], best_v)
                best_i = tl.where(slots[None, :] == j, (pid_v * BLOCK_V + a)[:, None], best_i)
                cand = tl.where(tl.arange(0, BLOCK_V)[None, :] == a[:, None], -float("inf"), cand)
            base = out[:, None] * K_PAD + slots[None, :]
            tl.store(topv_ptr + base, best_v, row_ok[:, None])
            tl.store(topi_ptr + base, best_i, row_ok[:, None])


def _partials(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, k_pad: int, block_n: int, block_v: int
) -> tuple[torch.Tensor, ...]:
    n, h = hidden.shape
    vocab = weight.shape[0]
    tiles = triton.cdiv(vocab, block_v)
    dev = hidden.device

    tile_max, tile_sum, tile_xsum = (
        poisoned(n, tiles, device=dev),
        poisoned(n, tiles, device=dev),
        poisoned(n, tiles, device=dev),
    )
    tile_tgt = torch.zeros(n, tiles, dtype=torch.float32, device=dev)  # only the target's tile writes
    top_v = poisoned(n, tiles, max(k_pad, 1), device=dev)
    top_i = poisoned(n, tiles, max(k_pad, 1), device=dev, dtype=torch.int32)
    block_h = min(64, triton.next_power_of_2(h))
    grid = (triton.cdiv(n, block_n), tiles)
    _partials_kernel[grid](
        hidden, weight, targets, tile_max, tile_sum, tile_xsum, tile_tgt, top_v, top_i,
        n, vocab, h, tiles, hidden.stride(0), weight.stride(0),
        BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_H=block_h, K_PAD=k_pad, IEEE=hidden.dtype == torch.float32,
        UPCAST=_INTERPRETER_BF16_DOT and hidden.dtype == torch.bfloat16,
    )  # fmt: skip
    return tile_max, tile_sum, tile_xsum, tile_tgt, top_v, top_i


def combine_lse(tile_max: torch.Tensor, tile_sum: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row log-sum-exp from per-tile (max, sum of exp); also the global max and the rescaled tile weights."""
    row_max = tile_max.max(dim=1).values
    scale = torch.exp(tile_max - row_max[:, None])
    total = (tile_sum * scale).sum(dim=1)
    return row_max + torch.log(total), scale, total


def lm_head_logprobs_triton(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    top_k: int = 0,
    ignore_index: int = -100,
    block_n: int = 64,
    block_v: int = 128,
    chunk_rows: int = 4096,
) -> Result:
    if triton is None:
        raise RuntimeError("Triton is not installed")
    if not 0 <= top_k <= 64:
        raise ValueError(f"top_k must lie in [0, 64], got {top_k}")
    if hidden.stride(1) != 1 or weight.stride(1) != 1:
        raise ValueError("hidden and weight must be row-major")
    k_pad = triton.next_power_of_2(top_k) if top_k else 0
    outs: list[Result] = []
    rows_per_chunk = chunk_rows if top_k else hidden.shape[0] or 1
    for start in range(0, hidden.shape[0], rows_per_chunk):
        h = hidden[start : start + rows_per_chunk]
        t = targets[start : start + rows_per_chunk]
        tile_max, tile_sum, tile_xsum, tile_tgt, top_v, top_i = _partials(h, weight, t, k_pad, block_n, block_v)
        lse, scale, total = combine_lse(tile_max, tile_sum)
        keep = t != ignore_index
        logprob = torch.where(keep, tile_tgt.sum(dim=1) - lse, 0.0)
        entropy = torch.where(keep, lse - (tile_xsum * scale).sum(dim=1) / total, 0.0)
        vals = ids = None
        if top_k:
            vals, pick = top_v.flatten(1).topk(top_k, dim=1)
            ids = top_i.flatten(1).gather(1, pick).long()
            vals = vals - lse[:, None]
        outs.append((logprob, entropy, vals, ids))
    if not outs:
        empty = torch.empty(0, dtype=torch.float32, device=hidden.device)
        return empty, empty, None, None
    logprob = torch.cat([o[0] for o in outs])
    entropy = torch.cat([o[1] for o in outs])
    if not top_k:
        return logprob, entropy, None, None
    return (
        logprob,
        entropy,
        torch.cat([o[2] for o in outs if o[2] is not None]),
        torch.cat([o[3] for o in outs if o[3] is not None]),
    )


def lm_head_logsumexp_triton(
    hidden: torch.Tensor, weight: torch.Tensor, block_n: int = 64, block_v: int = 128
) -> torch.Tensor:
    """Per-row log-sum-exp of hidden @ weight.T in float32, without the [N, V] logits."""
    if triton is None:
        raise RuntimeError("Triton is not installed")
    ignored = torch.full((hidden.shape[0],), -100, dtype=torch.int64, device=hidden.device)
    tile_max, tile_sum, *_ = _partials(hidden, weight, ignored, 0, block_n, block_v)
    return combine_lse(tile_max, tile_sum)[0]


def lm_head_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, top_k: int = 0, ignore_index: int = -100
) -> Result:
    """Dispatcher: the Triton kernel on CUDA tensors, the reference elsewhere."""
    if hidden.is_cuda and triton is not None:
        return lm_head_logprobs_triton(hidden, weight, targets, top_k, ignore_index)
    return lm_head_logprobs_reference(hidden, weight, targets, top_k, ignore_index)
