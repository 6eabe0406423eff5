"""Top-k up to 256 on both fused kernels under TRITON_INTERPRET=1, exact against float64: the same ids in the same
order (ties by id, the lower first, as a stable sort of the logits ranks them) and values within 1e-4."""

from __future__ import annotations

import importlib

import pytest
import torch

from proctor.kernels.expected_score import token_logprobs_reference
from proctor.kernels.lm_head_logprobs import (
    lm_head_logprobs_reference,
    lm_head_logprobs_triton,
    lm_head_set_logprobs_triton,
)
from proctor.kernels.target_logprobs import target_logprobs_reference, target_logprobs_triton

pytest.importorskip("triton")

KS = (1, 20, 64, 100, 128, 256)
lm = importlib.import_module("proctor.kernels.lm_head_logprobs")  # the package re-exports a function so named


def _float64_top_k(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 log-probs' k best and their ids, ties by id (a stable sort)."""
    lsm = torch.log_softmax(logits.double(), dim=-1)
    vals, ids = lsm.sort(dim=1, descending=True, stable=True)
    return vals[:, :k], ids[:, :k]


def _lm_inputs(n: int, vocab: int, hidden: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=gen).to(torch.bfloat16)
    w = (torch.randn(vocab, hidden, generator=gen) / hidden**0.5 * 3).to(torch.bfloat16)
    return h, w, torch.randint(0, vocab, (n,), generator=gen)


def _check_lm(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, k: int) -> None:
    lp, _, vals, ids = lm_head_logprobs_triton(h, w, t, top_k=k, entropy=False)
    ref_vals, ref_ids = _float64_top_k(h.double() @ w.double().T, k)
    ref_lp = lm_head_logprobs_reference(h.double(), w.double(), t, entropy=False)[0]
    assert vals is not None and ids is not None and vals.shape == (len(h), k)
    assert torch.equal(ids, ref_ids), "the same entries in the same order"
    assert (vals.double() - ref_vals).abs().max() <= 1e-4 and (lp.double() - ref_lp).abs().max() <= 1e-4


@pytest.mark.parametrize("k", KS)
def test_lm_head_top_k_matches_float64_on_a_ragged_vocabulary(k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # 3,001 words (a one-column tail past 2,992): 16 splits of 64 slots, so the splits' candidates answer
    # every row; none needs its own logits
    calls = []
    real = lm._exact_top_k
    monkeypatch.setattr(lm, "_exact_top_k", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    _check_lm(*_lm_inputs(3, 3_001, 32, seed=k), k)
    assert not calls


def test_lm_head_rows_a_split_cannot_answer_are_answered_from_their_own_logits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An ascending vocabulary puts all of the best 256 in the last split: its 64 slots are full at the 256th
    value, so the row is unsure and computed exactly (a chunk of its logits)."""
    h = torch.ones(2, 16, dtype=torch.bfloat16)
    w = (torch.arange(3_001, dtype=torch.float32)[:, None] / 1_000).expand(3_001, 16).to(torch.bfloat16)
    calls = []
    real = lm._exact_top_k
    monkeypatch.setattr(lm, "_exact_top_k", lambda hh, *a, **kw: calls.append(len(hh)) or real(hh, *a, **kw))
    _check_lm(h, w, torch.tensor([0, 3_000]), 256)
    assert calls == [2]


@pytest.mark.parametrize("k", [200, 256])
def test_lm_head_top_k_past_the_splits_candidates_is_answered_from_the_logits(
    k: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """257 words are a few tiles, so a few splits of 64 slots: 192 candidates, fewer than k (this raised a shape
    mismatch). Every row is then answered from its own logits, and exactly."""
    calls = []
    real = lm._exact_top_k
    monkeypatch.setattr(lm, "_exact_top_k", lambda hh, *a, **kw: calls.append(len(hh)) or real(hh, *a, **kw))
    _check_lm(*_lm_inputs(5, 257, 32, seed=k), k)
    assert calls == [5]


def test_lm_head_ties_rank_the_lower_id_first() -> None:
    """Reserved tokens sharing one weight row tie exactly: kept and ordered by id, at the k-th place too."""
    h, w, t = _lm_inputs(2, 1_000, 32, seed=3)
    w[600:700] = w[7] * 4  # a hundred copies of the best row
    for k in (64, 100, 128):
        _check_lm(h, w, t, k)


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("launch", ["default", "smallest buffer"])
def test_logits_top_k_matches_float64_on_a_ragged_vocabulary(k: int, launch: str) -> None:
    """One read of the logits for every k. The default launch (2,048-logit tiles, a 1,024-entry buffer) selects
    the first tile's own k best in registers; the smallest buffer (2 x k's power of two, 1,024-logit tiles) is
    also compacted every few tiles, a tile select again whenever a tile's entries outnumber the free places."""
    gen = torch.Generator().manual_seed(k)
    logits = (torch.randn(3, 4_097, generator=gen) * 3).to(torch.bfloat16)
    targets = torch.randint(0, 4_097, (3,), generator=gen)
    kw = {"block_v": 1_024, "buffer": 2 << (k - 1).bit_length()} if launch == "smallest buffer" else {}
    lp, ent, vals, ids = target_logprobs_triton(logits, targets, top_k=k, **kw)
    ref_lp, ref_ent, _, _ = target_logprobs_reference(logits.double(), targets)
    ref_vals, ref_ids = _float64_top_k(logits, k)
    assert vals is not None and ids is not None and ent is not None
    assert torch.equal(ids, ref_ids), "bf16 logits tie often: kept and ordered by id"
    assert (vals.double() - ref_vals).abs().max() <= 1e-4
    assert (lp.double() - ref_lp).abs().max() <= 1e-4 and (ent.double() - ref_ent).abs().max() <= 1e-4


@pytest.mark.parametrize("k", (20, 256))
def test_the_cpu_reference_ranks_ties_as_the_kernels_do(k: int) -> None:
    logits = torch.randint(-20, 20, (4, 3_000)).float()  # thousands of exact ties
    _, _, vals, ids = target_logprobs_reference(logits, torch.zeros(4, dtype=torch.long), top_k=k, entropy=False)
    ref_vals, ref_ids = _float64_top_k(logits, k)
    assert vals is not None and torch.equal(ids, ref_ids) and (vals.double() - ref_vals).abs().max() <= 1e-5


def test_without_entropy_nothing_else_changes() -> None:
    h, w, t = _lm_inputs(5, 700, 32, seed=5)
    for fn in (lm_head_logprobs_reference, lm_head_logprobs_triton):
        full = fn(h, w, t, 20)
        lean = fn(h, w, t, 20, entropy=False)
        assert lean[1] is None and full[1] is not None
        assert all(torch.equal(full[i], lean[i]) for i in (0, 2, 3))  # type: ignore[arg-type]


def test_a_probe_token_in_the_vocabularys_tail() -> None:
    """700 words: the body launch covers 688, the tail launch the last 12; a set token in each."""
    h, w, _ = _lm_inputs(3, 700, 32, seed=6)
    ids = torch.tensor([5, 687, 688, 699])
    got = lm_head_set_logprobs_triton(h, w, ids)
    assert (got.double() - token_logprobs_reference(h.double(), w.double(), ids)).abs().max() <= 1e-4


def test_top_k_past_256_is_refused_naming_the_limit() -> None:
    h, w, t = _lm_inputs(1, 300, 16, seed=7)
    with pytest.raises(ValueError, match=r"top_k must lie in \[0, 256\], got 257"):
        lm_head_logprobs_triton(h, w, t, top_k=257)
    with pytest.raises(ValueError, match=r"top_k must lie in \[0, 256\], got 257"):
        target_logprobs_triton(torch.zeros(1, 300), t, top_k=257)


@pytest.mark.parametrize("path", ["triton", "reference"])
def test_per_position_probes_from_the_same_pass(path: str) -> None:
    """128 token ids a row, each row its own (the tail's columns among them), from the pass's log-sum-exp."""
    h, w, t = _lm_inputs(5, 1_001, 32, seed=8)
    ids = torch.randint(0, 1_001, (5, 128), generator=torch.Generator().manual_seed(9))
    ids[:, 0] = 1_000  # the one-column tail
    out = torch.full((5, 128), float("nan"))
    fn = lm_head_logprobs_triton if path == "triton" else lm_head_logprobs_reference
    lp, _, vals, _ = fn(h, w, t, 20, entropy=False, probes=(ids, out))
    full = torch.log_softmax(h.double() @ w.double().T, dim=-1)
    assert (out.double() - full.gather(1, ids)).abs().max() <= 1e-4
    assert vals is not None and (lp.double() - full.gather(1, t[:, None])[:, 0]).abs().max() <= 1e-4


def test_probes_past_128_or_outside_the_vocabulary_are_refused() -> None:
    h, w, t = _lm_inputs(2, 300, 16, seed=10)
    with pytest.raises(ValueError, match=r"probes must be ids and out \[2, P <= 128\]"):
        lm_head_logprobs_triton(h, w, t, probes=(torch.zeros(2, 129, dtype=torch.long), torch.empty(2, 129)))
    with pytest.raises(ValueError, match=r"probe ids must lie in \[0, 300\), got 0\.\.300"):
        lm_head_logprobs_triton(h, w, t, probes=(torch.tensor([[0], [300]]), torch.empty(2, 1)))
