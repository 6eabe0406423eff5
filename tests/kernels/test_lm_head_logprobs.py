"""The fused lm_head kernel under TRITON_INTERPRET=1 against float64 on the same (rounded) inputs."""

from __future__ import annotations

import pytest
import torch

from proctor.kernels.lm_head_logprobs import lm_head_logprobs_reference, lm_head_logprobs_triton

pytest.importorskip("triton")


def _inputs(n: int, vocab: int, hidden: int, dtype: torch.dtype, seed: int, scale: float = 1.0):  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(seed)
    h = (torch.randn(n, hidden, generator=gen) * scale).to(dtype)
    w = (torch.randn(vocab, hidden, generator=gen) / hidden**0.5).to(dtype)
    t = torch.randint(0, vocab, (n,), generator=gen)
    return h, w, t


def _check(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, top_k: int, **kw: int) -> None:
    lp, ent, vals, ids = lm_head_logprobs_triton(h, w, t, top_k=top_k, **kw)
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
@pytest.mark.parametrize(("n", "vocab", "hidden", "top_k"), [(5, 300, 48, 0), (17, 1000, 80, 20), (3, 129, 16, 64)])
def test_matches_float64(dtype: torch.dtype, n: int, vocab: int, hidden: int, top_k: int) -> None:
    _check(*_inputs(n, vocab, hidden, dtype, seed=n + vocab), top_k=top_k, block_n=16, block_v=64)


def test_qwen_vocabulary_ignore_index_and_large_logits() -> None:
    h, w, t = _inputs(3, 151_936, 32, torch.bfloat16, seed=7, scale=20.0)
    t[1] = -100
    _check(h, w, t, top_k=5, block_n=16, block_v=4096)
    lp, ent, _, _ = lm_head_logprobs_triton(h, w, t, block_n=16, block_v=4096)
    assert lp[1] == 0.0 and ent[1] == 0.0


def test_row_chunks_with_top_k_give_the_same_answer() -> None:
    h, w, t = _inputs(9, 200, 32, torch.float32, seed=3)
    whole = lm_head_logprobs_triton(h, w, t, top_k=4, block_n=16, block_v=64)
    chunked = lm_head_logprobs_triton(h, w, t, top_k=4, block_n=16, block_v=64, chunk_rows=4)
    for a, b in zip(whole, chunked, strict=True):
        assert a is not None and b is not None and torch.allclose(a.double(), b.double(), atol=1e-6)
