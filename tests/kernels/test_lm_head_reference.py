"""The CPU path (the plain-torch reference) in float32 against float64, through its row chunks and cache blocks."""

from __future__ import annotations

import importlib

import pytest
import torch

from proctor.kernels.lm_head_logprobs import lm_head_logprobs_reference

lm = importlib.import_module("proctor.kernels.lm_head_logprobs")  # the package re-exports a function so named


def _run(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, probe_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    ranks = torch.full((len(h),), -1, dtype=torch.long)
    probes = torch.full(probe_ids.shape, float("nan"))
    lp, ent, vals, ids = lm_head_logprobs_reference(
        h, w, t, top_k=20, rank_out=ranks, chunk_rows=16, probes=(probe_ids, probes)
    )
    assert ent is not None and vals is not None and ids is not None
    return lp, ent, vals, ids, ranks, probes


def test_float32_blocks_match_float64_and_the_unblocked_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(0)
    n, vocab, hidden = 50, 1_000, 32
    h = torch.randn(n, hidden, generator=gen) * 3
    w = torch.randn(vocab, hidden, generator=gen) / hidden**0.5
    t = torch.randint(0, vocab, (n,), generator=gen)
    t[[3, 20]] = -100
    probe_ids = torch.randint(0, vocab, (n, 5), generator=gen)
    whole = _run(h, w, t, probe_ids)  # every 16-row chunk in one block
    monkeypatch.setattr(lm, "CACHE_BYTES", 7 * vocab * 4)  # blocks of 7 rows: 7, 7, 2 in each 16-row chunk
    lp, ent, vals, ids, ranks, probes = blocked = _run(h, w, t, probe_ids)
    assert all(torch.equal(a, b) for a, b in zip(whole, blocked, strict=True)), "blocks change nothing"

    logits = h.double() @ w.double().T
    full = torch.log_softmax(logits, dim=-1)
    keep = t != -100
    at = t.clamp(min=0)[:, None]
    assert (lp.double() - torch.where(keep, full.gather(1, at)[:, 0], 0.0)).abs().max() <= 1e-4
    assert (lp[~keep] == 0).all() and (ent[~keep] == 0).all() and (ranks[~keep] == 0).all()
    entropy = -(full.exp() * full).sum(dim=1)
    assert (ent.double() - entropy)[keep].abs().max() <= 1e-4
    assert (vals.double() - full.sort(dim=1, descending=True).values[:, :20]).abs().max() <= 1e-4
    assert (full.gather(1, ids) - vals.double()).abs().max() <= 1e-4, "ids point at their values"
    assert (probes.double() - full.gather(1, probe_ids)).abs().max() <= 1e-4
    float32 = h @ w.T  # ranks count the float32 logits at or above the target's, itself included
    counted = (float32 >= float32.gather(1, at)).sum(dim=1)
    assert torch.equal(ranks, torch.where(keep, counted, 0))
