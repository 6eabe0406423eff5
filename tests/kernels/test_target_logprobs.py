"""The Triton kernel under TRITON_INTERPRET=1 against the float64 reference on the same (rounded) inputs."""

from __future__ import annotations

import pytest
import torch

from proctor.kernels.target_logprobs import target_logprobs_reference, target_logprobs_triton

# tests/conftest.py sets TRITON_INTERPRET=1 before triton is imported: these CPU tensors run in the interpreter.
pytest.importorskip("triton")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _inputs(n: int, vocab: int, dtype: torch.dtype, scale: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, vocab, generator=gen) * scale).to(dtype)
    targets = torch.randint(0, vocab, (n,), generator=gen)
    return logits, targets


def _check(logits: torch.Tensor, targets: torch.Tensor, top_k: int, **kw: int) -> None:
    lp, ent, vals, ids = target_logprobs_triton(logits, targets, top_k=top_k, **kw)
    ref_lp, ref_ent, ref_vals, _ = target_logprobs_reference(logits.double(), targets, top_k=top_k)
    assert not torch.isnan(lp).any() and not torch.isnan(ent).any(), "every output written"
    assert (lp.double() - ref_lp).abs().max() <= 1e-4
    assert (ent.double() - ref_ent).abs().max() <= 1e-4
    if top_k:
        assert vals is not None and ids is not None and ref_vals is not None
        assert (vals.double() - ref_vals).abs().max() <= 1e-4  # ties may pick other ids with equal values
        full = torch.log_softmax(logits.double(), dim=-1)
        assert (full.gather(1, ids) - vals.double()).abs().max() <= 1e-4


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("n", "vocab", "block", "top_k"), [(7, 1000, 256, 0), (3, 4097, 1024, 20), (1, 33, 4096, 33), (2, 70, 16, 64)]
)
def test_matches_float64_reference(dtype: torch.dtype, n: int, vocab: int, block: int, top_k: int) -> None:
    logits, targets = _inputs(n, vocab, dtype, 3.0, seed=n * vocab)
    _check(logits, targets, top_k, block_v=block)


def test_qwen_vocabulary_large_magnitudes_and_ignore_index() -> None:
    logits, targets = _inputs(3, 151_936, torch.bfloat16, 30.0, seed=1)
    logits[0, 5] = 1e4  # one huge logit: a naive exp overflows
    targets[1] = -100
    _check(logits, targets, top_k=20)
    lp, ent, _, _ = target_logprobs_triton(logits, targets)
    assert lp[1] == 0.0 and ent[1] == 0.0
