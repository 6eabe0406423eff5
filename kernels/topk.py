"""A running top-k per row that Triton kernels update tile by tile.

Each row keeps its best K values (and their column ids) in K_PAD slots; the slots past K hold +inf so they are
never the row's minimum and never replaced. A tile only touches the slots through the values above the row's
current K-th best (theta): once a few tiles have been seen, most tiles have none, and the merge loop runs zero
times. Worst case (a vocabulary in ascending logit order) every tile inserts K values: K passes over the tile.
Columns are int32 (a vocabulary under 2^31), and no [rows, tile] integer mask is ever built.
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
    def topk_merge(x, col0, best_v, best_i, theta, K_PAD: tl.constexpr, BLOCK_V: tl.constexpr):  # type: ignore[no-untyped-def]
        """Merge the tile x [ROWS, BLOCK_V] (columns col0 + 0..BLOCK_V-1; -inf where absent) into the running
        top-k: one arg-max pass per value that enters some row's best K."""
        slots = tl.arange(0, K_PAD)
        lanes = tl.arange(0, BLOCK_V)
        cand = tl.where(x > theta[:, None], x, -float("inf"))
        top = tl.max(cand, axis=1)
        while tl.max(top, axis=0) > -float("inf"):
            at = tl.min(tl.where(cand == top[:, None], lanes[None, :], BLOCK_V), axis=1)  # the first arg-max
            low = tl.argmin(best_v, axis=1)
            put = (slots[None, :] == low[:, None]) & (top > theta)[:, None]
            best_v = tl.where(put, top[:, None], best_v)
            best_i = tl.where(put, (col0 + at)[:, None], best_i)
            theta = tl.min(best_v, axis=1)
            cand = tl.where((lanes[None, :] != at[:, None]) & (cand > theta[:, None]), cand, -float("inf"))
            top = tl.max(cand, axis=1)
        return best_v, best_i, theta
