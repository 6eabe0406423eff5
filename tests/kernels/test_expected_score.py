"""Expected-score kernels (Triton under TRITON_INTERPRET=1) against float64."""

from __future__ import annotations

import pytest
import torch

from proctor.kernels.expected_score import expected_score, token_logprobs_reference, token_logprobs_triton

pytest.importorskip("triton")

SCORE_TOKENS = torch.tensor([15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 605])  # "0".."9", "10" in some vocabulary


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("vocab", [700, 9_001])  # the logits kernel meets 151,936 in its own tests
def test_hidden_and_logits_inputs_match_float64(dtype: torch.dtype, vocab: int) -> None:
    gen = torch.Generator().manual_seed(vocab)
    h = torch.randn(5, 32, generator=gen).to(dtype)
    w = (torch.randn(vocab, 32, generator=gen) / 4).to(dtype)
    ref = token_logprobs_reference(h.double(), w.double(), SCORE_TOKENS)
    fused = token_logprobs_triton(h, w, SCORE_TOKENS)
    assert not torch.isnan(fused).any() and (fused.double() - ref).abs().max() <= 1e-4
    logits = (h.double() @ w.double().T).to(dtype)
    from_logits = token_logprobs_triton(logits, None, SCORE_TOKENS)
    ref_logits = token_logprobs_reference(logits.double(), None, SCORE_TOKENS)
    assert (from_logits.double() - ref_logits).abs().max() <= 1e-4


def test_expected_value_and_renormalisation() -> None:
    ids = torch.tensor([1, 2, 3])
    logits = torch.full((2, 10), -1e4)
    logits[0, 1], logits[0, 3] = 0.0, 0.0  # half on value 0, half on value 2
    logits[1, 2] = 0.0
    probs, expected = expected_score(logits, None, ids, torch.tensor([0.0, 1.0, 2.0]), renormalize=True)
    assert torch.allclose(probs[0], torch.tensor([0.5, 0.0, 0.5])) and torch.allclose(
        expected, torch.tensor([1.0, 1.0])
    )


def test_token_ids_outside_the_vocabulary_are_refused() -> None:
    with pytest.raises(ValueError, match=r"token_ids must lie in \[0, 50\)"):
        token_logprobs_triton(torch.randn(2, 16), torch.randn(50, 16), torch.tensor([3, 50]))
