"""Per-position probes read from the fused lm_head's own tiles (kernels/probe_logprobs.py, the kernel's `_probes`):
the host's order (sorted, deduplicated, slots back to the caller's order), its passes a tile, and the kernel under
TRITON_INTERPRET=1 against float64 on the same (rounded) inputs."""

from __future__ import annotations

import pytest
import torch

from proctor.kernels import lm_head_plan
from proctor.kernels import probe_logprobs as pl
from proctor.kernels.lm_head_logprobs import lm_head_logprobs_reference, lm_head_logprobs_triton
from proctor.kernels.lm_head_plan import lm_head_launches


def test_the_order_sorts_drops_duplicates_and_maps_back() -> None:
    ids = torch.tensor([[7, 3, 7, 0, 3], [4, 4, 4, 4, 4], [9, 8, 7, 6, 5]])
    order = pl.probe_order(ids, vocab=10)
    assert order.ids.tolist() == [[0, 3, 7, 10, 10], [4, 10, 10, 10, 10], [5, 6, 7, 8, 9]]
    assert torch.equal(order.ids.long().gather(1, order.slots), ids), "every caller's id at its slot"
    assert order.starts([0, 4, 8]).tolist() == [[0, 2, 3], [0, 0, 1], [0, 0, 3]]


@pytest.mark.parametrize(
    ("col0", "columns", "tile_v", "block_n"), [(0, 300, 64, 2), (0, 288, 192, 3), (288, 12, 16, 4)]
)
def test_the_passes_are_the_most_probes_a_row_of_the_block_has_in_the_tile(
    col0: int, columns: int, tile_v: int, block_n: int
) -> None:
    """Against a count per row and tile; rows past the last block's end, ids outside the launch's columns and the
    pads left out."""
    gen = torch.Generator().manual_seed(col0 + tile_v)
    ids = torch.randint(0, 300, (7, 40), generator=gen)
    ids[1] = ids[1] % 5  # many duplicates, few distinct
    order = pl.probe_order(ids, vocab=300)
    tiles = -(-columns // tile_v)
    want = torch.zeros(-(-7 // block_n), tiles, dtype=torch.int32)
    for r in range(7):
        for t in range(tiles):
            lo, hi = col0 + t * tile_v, min(col0 + (t + 1) * tile_v, col0 + columns)
            count = sum(lo <= i < hi for i in set(ids[r].tolist()))
            want[r // block_n, t] = max(int(want[r // block_n, t]), count)
    assert torch.equal(order.passes(col0, columns, tile_v, block_n), want)


def _float64(h: torch.Tensor, w: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(h.double() @ w.double().T, dim=1).gather(1, ids)


def _inputs(n: int, vocab: int, hidden: int, probes: int, dtype: torch.dtype, seed: int):  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=gen).to(dtype)
    w = (torch.randn(vocab, hidden, generator=gen) / hidden**0.5 * 4).to(dtype)
    ids = torch.randint(0, vocab, (n, probes), generator=gen)
    return h, w, torch.randint(0, vocab, (n,), generator=gen), ids


def _edges(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """Row 0 the vocabulary's last id and the columns around each 16-bit tile's blocks (128, 192, 256: the first
    accumulator's end, the second's, the tile's); row 1 one id repeated (a short row as the backends pad it); row
    2 a few ids then repeats of its first; row 3 all its ids in the first tile (its cursor runs out early)."""
    ids = ids.clone()
    width = ids.shape[1]
    edges = [vocab - 1, *(c for c in (0, 127, 128, 159, 160, 191, 192, 255, 256, 257) if c < vocab)]
    ids[0, : min(width, len(edges))] = torch.tensor(edges[:width])
    ids[1] = ids[1, 0]
    ids[2, 3:] = ids[2, 0]
    ids[3] = torch.arange(width) % min(vocab, 128)
    return ids


def _check(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, ids: torch.Tensor, top_k: int, rank: bool) -> None:
    out = torch.full(ids.shape, float("nan"))
    ranks = torch.empty(h.shape[0], dtype=torch.long) if rank else None
    lp, _, vals, _ = lm_head_logprobs_triton(h, w, t, top_k=top_k, rank_out=ranks, entropy=False, probes=(ids, out))
    assert not out.isnan().any()
    assert (out.double() - _float64(h, w, ids)).abs().max() <= 1e-4
    ref_lp, _, ref_vals, _ = lm_head_logprobs_reference(h.double(), w.double(), t, top_k=top_k, entropy=False)
    assert (lp.double() - ref_lp).abs().max() <= 1e-4, "probes leave the log-probs as they were"
    if top_k:
        assert vals is not None and ref_vals is not None and (vals.double() - ref_vals).abs().max() <= 1e-4


@pytest.mark.parametrize("top_k", [0, 20, 256])
@pytest.mark.parametrize("rank", [False, True])
@pytest.mark.parametrize(
    ("n", "vocab", "probes", "dtype"),
    # 300 words: a last 16-bit tile that ends inside its first block; 502: a body of 496 and a 6-column tail launch;
    # 70 rows: two 128-row blocks; 6 rows: one 64-row block; float32's 64 x 32 tiles.
    [
        (6, 300, 9, torch.bfloat16),
        (70, 502, 20, torch.bfloat16),
        (5, 400, 12, torch.float16),
        (4, 300, 7, torch.float32),
    ],
)
def test_probes_from_the_tiles_equal_float64(
    n: int, vocab: int, probes: int, dtype: torch.dtype, top_k: int, rank: bool
) -> None:
    h, w, t, ids = _inputs(n, vocab, 32, probes, dtype, seed=n + vocab + top_k)
    _check(h, w, t, _edges(ids, vocab), top_k, rank)


def test_many_splits_start_each_row_at_its_splits_first_probe() -> None:
    """3,001 words: 12 tiles split over the programs, each split's cursors started where its columns begin; 128
    probes a row (the most), ids crowded into a few tiles (several passes there) and spread over the rest."""
    h, w, t, ids = _inputs(3, 3_001, 16, 128, torch.bfloat16, seed=4)
    ids[0, :64] = torch.arange(64) + 1_000  # 64 ids in one tile: 64 passes there
    ids[1] = torch.arange(128) * 23  # one or two a tile, every tile
    assert lm_head_launches(3, 3_001, torch.bfloat16, 5, probes=128)[0].splits > 1
    _check(h, w, t, ids, top_k=5, rank=False)


def test_launches_keep_the_probes_within_their_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """16,384 rows x 128 probes fit one launch's budget; a budget of 100 rows' makes launches of 64 rows, each with
    its own order, the same answer."""
    for launch in lm_head_launches(16_384, 151_936, torch.bfloat16, 20, probes=128):
        assert launch.probe_bytes() <= pl.PROBE_BUDGET
    assert [launch.rows for launch in lm_head_launches(16_384, 151_936, torch.bfloat16, 0, probes=128)] == [16_384]
    h, w, t, ids = _inputs(150, 200, 16, 6, torch.float32, seed=3)
    whole = torch.empty(ids.shape)
    lm_head_logprobs_triton(h, w, t, probes=(ids, whole))
    monkeypatch.setattr(lm_head_plan, "PROBE_BUDGET", 100 * 6 * pl.PROBE_BYTES)
    assert [launch.rows for launch in lm_head_launches(150, 200, torch.float32, 0, probes=6)] == [64, 64, 22]
    chunked = torch.empty(ids.shape)
    lm_head_logprobs_triton(h, w, t, probes=(ids, chunked))
    assert torch.equal(whole, chunked)
    assert (chunked.double() - _float64(h, w, ids)).abs().max() <= 1e-4


def test_the_reference_serves_cpu_tensors_exactly() -> None:
    h, w, t, ids = _inputs(9, 300, 48, 128, torch.bfloat16, seed=9)
    ids = _edges(ids, 300)
    out = torch.empty(ids.shape, dtype=torch.float64)
    lm_head_logprobs_reference(h.double(), w.double(), t, top_k=3, probes=(ids, out))
    assert (out - _float64(h, w, ids)).abs().max() <= 1e-12
