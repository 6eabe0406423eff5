"""A running top-k per row that the fused lm_head kernel updates tile by tile (the logits kernel, one row a
program, keeps a buffer of candidates instead: kernels/target_logprobs.py).

Each row keeps its best K values (and their column ids) in K_PAD slots; the slots past K hold +inf so they are
never the row's minimum and never replaced. A tile only touches the slots through the values above the row's
current K-th best (theta): once a few tiles have been seen, most tiles have none, and the merge loop runs zero
times. Worst case (a vocabulary in ascending logit order) every merge inserts K values: K passes over each half of
a tile.
Columns are int32 (a vocabulary under 2^31), and no [rows, tile] integer mask is ever built.

`topk_merge_pairs` merges a tile as its even and its odd columns, one after the other: on a tensor-core
accumulator, whose threads each hold column pairs, the split is free and the merge passes' temporaries are half
the tile's size (what keeps the fused lm_head kernel's 128 x (128 + 64) tile free of spills with a top-20 beside it).
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is optional: the references serve CPU tensors
    triton = None


if triton is not None:

    @triton.jit  # type: ignore[untyped-decorator]
    def topk_init(ROWS: tl.constexpr, K: tl.constexpr, K_PAD: tl.constexpr):  # type: ignore[no-untyped-def]
        """(best values [ROWS, K_PAD], best ids [ROWS, K_PAD] int32, theta [ROWS]) before any tile."""
        slots = tl.arange(0, K_PAD)
        best_v = tl.where(slots[None, :] < K, -float("inf"), float("inf")) + tl.zeros((ROWS, K_PAD), tl.float32)
        best_i = tl.zeros((ROWS, K_PAD), tl.int32)
        theta = tl.full((ROWS,), -float("inf"), tl.float32)
        return best_v, best_i, theta

    @triton.jit  # type: ignore[untyped-decorator]
    def _merge_passes(cand, cols, best_v, best_i, theta, K_PAD: tl.constexpr):  # type: ignore[no-untyped-def]
        """Merge the candidates cand [ROWS, W] (-inf where not above theta) at columns cols [W] into the running
        top-k: one arg-max pass per value that enters some row's best K."""
        slots = tl.arange(0, K_PAD)
        top = tl.max(cand, axis=1)
        while tl.max(top, axis=0) > -float("inf"):
            at = tl.min(tl.where(cand == top[:, None], cols[None, :], 2**31 - 1), axis=1)  # the first arg-max
            low = tl.argmin(best_v, axis=1)
            put = (slots[None, :] == low[:, None]) & (top > theta)[:, None]
            best_v = tl.where(put, top[:, None], best_v)
            best_i = tl.where(put, at[:, None], best_i)
            theta = tl.min(best_v, axis=1)
            cand = tl.where((cols[None, :] != at[:, None]) & (cand > theta[:, None]), cand, -float("inf"))
            top = tl.max(cand, axis=1)
        return best_v, best_i, theta

    @triton.jit  # type: ignore[untyped-decorator]
    def topk_merge_pairs(x, col0, best_v, best_i, theta, K_PAD: tl.constexpr, BLOCK_V: tl.constexpr):  # type: ignore[no-untyped-def]
        """Merge the tile x [ROWS, BLOCK_V] (columns col0 + 0..BLOCK_V-1; -inf where absent) into the running top-k,
        its even columns first and then its odd ones (among equal values the id kept may not be the lowest: the
        candidates' selection, kernels/topk_select.py, checks the rows where that can matter)."""
        cand = tl.where(x > theta[:, None], x, -float("inf"))
        if tl.max(tl.max(cand, axis=1), axis=0) > -float("inf"):
            even, odd = tl.split(tl.reshape(cand, (cand.shape[0], BLOCK_V // 2, 2)))
            cols = col0 + 2 * tl.arange(0, BLOCK_V // 2)
            best_v, best_i, theta = _merge_passes(even, cols, best_v, best_i, theta, K_PAD)
            odd = tl.where(odd > theta[:, None], odd, -float("inf"))
            best_v, best_i, theta = _merge_passes(odd, cols + 1, best_v, best_i, theta, K_PAD)
        return best_v, best_i, theta
