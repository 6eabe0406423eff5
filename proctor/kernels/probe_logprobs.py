"""Per-position probes (each row's own token ids, a student's top-k) read from the fused lm_head's own tiles: the
host side. ids [N, P] -> each row's distinct ids, sorted, and the passes each tile needs; the kernel's logits of
them -> log-probs [N, P] float32 in the caller's order, exact (the float32 logits the lm_head computes for its
log-sum-exp, picked out of its registers).

The kernel (kernels/lm_head_logprobs.py, `_probes`) computes every logit tile [BLOCK_N, BLOCK_V + BLOCK_V2] in
registers anyway; the probes are a subset of them. Each row carries a cursor into its sorted ids, started at its
split's first (`ProbeOrder.starts`, a searchsorted here), and the row's next id. Over a tile the program makes as
many passes as the busiest of its rows has ids there (`ProbeOrder.passes`, counted here: counting in the kernel
takes a reduction across the warps a pass, whose registers spill beside a top-k); a pass picks each row's next id's
logit out of the tile if it lies there (compare, select, row sum: what the target's logit costs), stores it at the
row's cursor and moves the cursor on. No bitmap over the vocabulary, no second product, no weight row read again;
a tile no row probes costs nothing.

Any ids (random over the vocabulary, |U| ~ V) cost ~1.4-1.9 passes a tile; ids that overlap across positions cost
less. A batch whose rows crowd their ids into tiles no other row of their block probes costs up to P passes in each
of those tiles: exact, slower (bench/cost_model.py prices these layouts).

The caller's duplicates (the backends pad short rows by repeating their first id) collapse into one slot, so they
cost no pass; `ProbeOrder.slots` maps every one of the caller's [N, P] back to its slot. Extra memory:
`PROBE_BYTES` a probe while the order is built (the launches take rows in chunks that keep it within PROBE_BUDGET).
CPU tensors never come here: the reference reads the probes from its logits (target_logprobs_reference).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

PROBE_BUDGET = 2**28  # bytes of extra memory the probes may hold at once (the other kernels' 0.25 GiB)
# The host's buffers a probe at their peak, counted from the code: `probe_order` holds ~37 bytes (the ids made int32,
# the sort's id and int64 place, the first-of-its-id mask, the int64 slot, the distinct ids and the caller's int64
# slots); the peak is in `ProbeOrder.passes`, beside the order's 12 and the kernel's float32 logits: the tile index
# (int64), two masks, and the run lengths' int64 temporaries (the masked place, cummax's values and indices, the
# difference, the run): ~66 bytes, 80 with margin.
PROBE_BYTES = 80


@dataclass(frozen=True)
class ProbeOrder:
    """A launch span's probes as the kernel reads them."""

    ids: torch.Tensor  # [rows, P] int32: each row's distinct ids, ascending, then the vocabulary size (no column)
    slots: torch.Tensor  # [rows, P] int64: the place in `ids` of each of the caller's ids

    def starts(self, columns: Sequence[int]) -> torch.Tensor:
        """[rows, len(columns)] int32: per row the place of its first id at or after each column, where a split
        that begins at that column starts its cursor."""
        first = torch.tensor(columns, dtype=torch.int32, device=self.ids.device)
        return torch.searchsorted(self.ids, first.expand(self.ids.shape[0], -1).contiguous()).int()

    def passes(self, col0: int, columns: int, tile_v: int, block_n: int) -> torch.Tensor:
        """[row blocks, tiles] int32 over the columns col0... (tiles of `tile_v`, blocks of `block_n` rows): the
        most distinct ids one row of the block has in the tile, the passes the kernel makes there."""
        rows, width = self.ids.shape
        tiles = -(-columns // tile_v)
        inside = (self.ids >= col0) & (self.ids < col0 + columns)
        tile = torch.where(inside, (self.ids - col0) // tile_v, tiles).long()  # outside: one more, dropped
        # each id's place in its row's run of ids in the same tile (the ids are sorted, so a tile's are adjacent)
        place = torch.arange(width, device=tile.device).expand(rows, -1)
        first = torch.ones_like(inside)
        first[:, 1:] = tile[:, 1:] != tile[:, :-1]
        run = place - torch.where(first, place, 0).cummax(dim=1).values + 1
        block = torch.arange(rows, device=tile.device)[:, None] // block_n
        out = torch.zeros((-(-rows // block_n)) * (tiles + 1), dtype=torch.int32, device=tile.device)
        out.scatter_reduce_(0, (block * (tiles + 1) + tile).flatten(), run.flatten().int(), "amax")
        return out.view(-1, tiles + 1)[:, :tiles].contiguous()


def probe_order(ids: torch.Tensor, vocab: int) -> ProbeOrder:
    """Each row of ids [rows, P] (in [0, vocab)) sorted, its duplicates dropped: one sort and a few passes over
    [rows, P], no host sync."""
    key, place = ids.int().sort(dim=1)
    first = torch.ones_like(key, dtype=torch.bool)
    first[:, 1:] = key[:, 1:] != key[:, :-1]
    slot = first.cumsum(dim=1) - 1  # each sorted probe's slot among its row's distinct ids
    del first  # freed as soon as done with, here and below: PROBE_BYTES counts the peak
    distinct = torch.full_like(key, vocab).scatter_(1, slot, key)  # duplicates write their slot's own id again
    del key
    return ProbeOrder(distinct, torch.empty_like(slot).scatter_(1, place, slot))


def probe_logprobs(logits: torch.Tensor, order: ProbeOrder, lse: torch.Tensor) -> torch.Tensor:
    """The caller's [rows, P] log-probs from the kernel's logits in `order`'s slots and each row's log-sum-exp."""
    return logits.gather(1, order.slots).sub_(lse[:, None])
