"""The fused lm_head kernel under TRITON_INTERPRET=1 against float64 on the same (rounded) inputs."""

from __future__ import annotations

import pytest
import torch

from proctor.kernels import lm_head_plan
from proctor.kernels.lm_head_logprobs import lm_head_logprobs_reference, lm_head_logprobs_triton, rank_threshold
from proctor.kernels.lm_head_plan import H200_SMS, PARTIALS_BUDGET, lm_head_launches

pytest.importorskip("triton")


def _inputs(n: int, vocab: int, hidden: int, dtype: torch.dtype, seed: int, scale: float = 1.0):  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(seed)
    h = (torch.randn(n, hidden, generator=gen) * scale).to(dtype)
    w = (torch.randn(vocab, hidden, generator=gen) / hidden**0.5).to(dtype)
    t = torch.randint(0, vocab, (n,), generator=gen)
    return h, w, t


def _check(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, top_k: int) -> None:
    lp, ent, vals, ids = lm_head_logprobs_triton(h, w, t, top_k=top_k)
    ref_lp, ref_ent, ref_vals, _ = lm_head_logprobs_reference(h.double(), w.double(), t, top_k=top_k)
    assert not torch.isnan(lp).any() and not torch.isnan(ent).any()
    assert (lp.double() - ref_lp).abs().max() <= 1e-4
    assert (ent.double() - ref_ent).abs().max() <= 1e-4
    if top_k:
        assert vals is not None and ids is not None and ref_vals is not None
        assert (vals.double() - ref_vals).abs().max() <= 1e-4
        full = torch.log_softmax(h.double() @ w.double().T, dim=-1)
        assert (full.gather(1, ids) - vals.double()).abs().max() <= 1e-4, "ids point at their values"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("n", "vocab", "hidden", "top_k"),
    # 5 rows: one 64-row block; 70: two 128-row blocks, H a multiple of BLOCK_H (the unmasked GPU path). The last
    # 16-bit tile of 300 and of 600 words ends inside its first accumulator (the second lies past the vocabulary),
    # of 400 words (top-0: 128 + 128 columns) and of 129 (top-64: 128 + 64) inside its second.
    [(5, 300, 48, 0), (6, 400, 64, 0), (70, 600, 64, 20), (3, 129, 16, 64)],
)
def test_matches_float64(dtype: torch.dtype, n: int, vocab: int, hidden: int, top_k: int) -> None:
    _check(*_inputs(n, vocab, hidden, dtype, seed=n + vocab), top_k=top_k)


def test_many_splits_ignore_index_and_large_logits() -> None:
    # 3,001 words: 24 tiles split over the programs, a ragged last tile (the interpreter makes Qwen's 151,936 slow).
    h, w, t = _inputs(3, 3_001, 32, torch.bfloat16, seed=7, scale=20.0)
    t[1] = -100
    _check(h, w, t, top_k=5)
    lp, ent, _, _ = lm_head_logprobs_triton(h, w, t)
    assert lp[1] == 0.0 and ent[1] == 0.0


def test_row_chunks_give_the_same_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    h, w, t = _inputs(150, 200, 32, torch.float32, seed=3)
    whole = lm_head_logprobs_triton(h, w, t, top_k=4)
    monkeypatch.setattr(lm_head_plan, "PARTIALS_BUDGET", 1)  # every launch as small as it can be: one 64-row block
    assert [launch.rows for launch in lm_head_launches(150, 200, torch.float32, 4)] == [64, 64, 22]
    chunked = lm_head_logprobs_triton(h, w, t, top_k=4)
    for a, b in zip(whole, chunked, strict=True):
        assert a is not None and b is not None and torch.allclose(a.double(), b.double(), atol=1e-6)


def test_ascending_vocabulary_worst_case_for_the_running_top_k() -> None:
    """Every tile beats the last: each one inserts K values into every row's running top-k."""
    h = torch.ones(4, 16)
    w = (torch.arange(500, dtype=torch.float32)[:, None] / 100).expand(500, 16).contiguous()
    w = w + torch.randn(500, 16, generator=torch.Generator().manual_seed(0)) * 1e-3
    _check(h, w, torch.tensor([0, 499, 250, 1]), top_k=20)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("top_k", [0, 1, 20, 64])
@pytest.mark.parametrize("rows", [1, 11, 256, 16_384])
def test_launches_cover_every_row_once_and_fill_waves(dtype: torch.dtype, top_k: int, rows: int) -> None:
    launches = lm_head_launches(rows, 151_936, dtype, top_k)
    assert sum(launch.rows for launch in launches) == rows
    for launch in launches:
        tiles = -(-151_936 // launch.tile_v)
        assert launch.splits * launch.tiles_per_split >= tiles > (launch.splits - 1) * launch.tiles_per_split
        assert launch.partial_bytes() <= PARTIALS_BUDGET
        if rows == 16_384:  # whole waves of 132 SMs, to within one program in ten
            waves = -(-launch.programs // H200_SMS)
            assert launch.programs / (waves * H200_SMS) >= 0.9
    if rows <= 64:
        assert launches[0].row_blocks == 1, "few rows: one block, the weight read once"


def test_top_k_past_the_vocabulary_is_refused() -> None:
    h, w, t = _inputs(2, 10, 16, torch.float32, seed=1)
    with pytest.raises(ValueError, match=r"top_k 20 exceeds the vocabulary \(10\)"):
        lm_head_logprobs_triton(h, w, t, top_k=20)


def test_a_target_outside_the_vocabulary_is_refused() -> None:
    """A clamped weight load would give it the last word's logit, silently."""
    h, w, t = _inputs(3, 300, 16, torch.bfloat16, seed=2)
    t[1] = 300
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 300\) or be ignore_index \(-100\): got 300"):
        lm_head_logprobs_triton(h, w, t)
    t[1] = -100
    assert lm_head_logprobs_triton(h, w, t)[0][1] == 0.0


def _ranks(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the kernel's ranks, float64's), every other output still checked against float64 and the ranks bounded.

    float64's: the logits rounded to the inputs' dtype, as the kernel (and vLLM's lm_head) ranks them. Bounds: a
    logit within float32 accumulation error (1e-5) of a rounding boundary may round either way; the torch
    reference (the CPU path) must fall within them too."""
    got = torch.full((h.shape[0],), -1, dtype=torch.long)
    lp, ent, vals, _ = lm_head_logprobs_triton(h, w, t, top_k=top_k, rank_out=got)
    ref_lp, ref_ent, ref_vals, _ = lm_head_logprobs_reference(h.double(), w.double(), t, top_k=top_k)
    assert (lp.double() - ref_lp).abs().max() <= 1e-4, "a rank leaves the log-probs as they were"
    assert (ent.double() - ref_ent).abs().max() <= 1e-4
    if top_k:
        assert vals is not None and ref_vals is not None and (vals.double() - ref_vals).abs().max() <= 1e-4
    logits = h.double() @ w.double().T
    keep = t != -100
    at = t.clamp(min=0)[:, None]

    def rnd(x: torch.Tensor) -> torch.Tensor:
        return x.to(h.dtype).double()

    others = torch.ones_like(logits, dtype=torch.bool).scatter(1, at, False)
    own = logits.gather(1, at)
    exact = ((rnd(logits) >= rnd(own)) & others).sum(dim=1) + 1
    low = ((rnd(logits - 1e-5) >= rnd(own + 1e-5)) & others).sum(dim=1) + 1
    high = ((rnd(logits + 1e-5) >= rnd(own - 1e-5)) & others).sum(dim=1) + 1
    exact, low, high = (torch.where(keep, x, 0) for x in (exact, low, high))
    cpu = torch.full_like(got, -1)
    lm_head_logprobs_reference(h, w, t, top_k=top_k, rank_out=cpu)
    for ranks in (got, cpu):
        assert ((low <= ranks) & (ranks <= high)).all(), (ranks, low, high)
    return got, exact


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("n", "vocab", "hidden", "top_k"),
    # ragged last tiles as in test_matches_float64; 3,001 words: many splits, each counting its own columns
    [(5, 300, 48, 1), (70, 600, 64, 20), (3, 129, 16, 64), (4, 3_001, 32, 0)],
)
def test_ranks_match_float64(dtype: torch.dtype, n: int, vocab: int, hidden: int, top_k: int) -> None:
    h, w, t = _inputs(n, vocab, hidden, dtype, seed=n * vocab)
    logits = h.double() @ w.double().T
    t[0] = int(logits[0].argmax())  # rank 1, unless another logit rounds to the same value
    t[-1] = int(logits[-1].argmin())
    if n > 2:
        t[1] = -100
    got, exact = _ranks(h, w, t, top_k)
    if n > 2:
        assert got[1] == 0, "an ignore-index row has no rank"
    assert (got == exact).float().mean() >= 0.95, (got, exact)


def test_tied_logits_count_in_as_vllm_counts_them() -> None:
    """Reserved tokens often share one weight row: a 16-bit model's equal logits all count (vLLM: x >= value)."""
    h, w, t = _inputs(8, 300, 32, torch.bfloat16, seed=11)
    w[[3, 150, 299]] = w[7].clone()
    t[:4] = 7
    got, exact = _ranks(h, w, t, top_k=0)
    assert torch.equal(got, exact), (got, exact)
    logits = (h.double() @ w.double().T).to(torch.bfloat16)
    assert all(int((logits[i] >= logits[i, 7]).sum()) == got[i] for i in range(4))


def test_ranks_with_row_chunks_and_a_wrong_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    h, w, t = _inputs(150, 200, 32, torch.float32, seed=5)
    whole, _ = _ranks(h, w, t, top_k=4)
    monkeypatch.setattr(lm_head_plan, "PARTIALS_BUDGET", 1)
    assert [launch.rows for launch in lm_head_launches(150, 200, torch.float32, 4, rank=True)] == [64, 64, 22]
    chunked, _ = _ranks(h, w, t, top_k=4)
    assert torch.equal(chunked, whole)
    with pytest.raises(ValueError, match=r"rank_out must be an int64 \[150\] tensor, got torch.int32 \(150,\)"):
        lm_head_logprobs_triton(h, w, t, rank_out=torch.zeros(150, dtype=torch.int32))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rank_threshold_is_the_rounding_boundary(dtype: torch.dtype) -> None:
    """x >= rank_threshold(r) exactly when x rounded to the dtype >= r: at random values, at zeros of both signs,
    and at each boundary and the float32 values either side of it."""
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(20_000, generator=gen) * s for s in (1e-6, 1e-3, 1.0, 30.0)])
    r = torch.cat([x[:300].to(dtype), torch.tensor([0.0, -0.0, 1.0, -1.0, 0.5], dtype=dtype)])
    edge = rank_threshold(r)
    inf = torch.tensor(float("inf"))
    xs = torch.cat([x, edge, torch.nextafter(edge, -inf), torch.nextafter(edge, inf)])
    for value, threshold in zip(r, edge, strict=True):
        assert torch.equal(xs.to(dtype) >= value, xs >= threshold), (value, threshold)
