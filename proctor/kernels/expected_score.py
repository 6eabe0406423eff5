"""The distribution over a small set of tokens at given rows, and its expected value (a reward model's score).

Input is hidden states [R, H] with the lm_head weight [V, H], or logits [R, V] (weight None). The set's
probabilities are normalised over the full vocabulary (one pass: the fused lm_head kernel, which also picks the
set's logits out of its tiles, or the logits kernel) and optionally renormalised over the set.
"""

from __future__ import annotations

import torch

from proctor.kernels.lm_head_logprobs import HAVE_TRITON, lm_head_set_logprobs_triton
from proctor.kernels.target_logprobs import logsumexp_triton


def token_logprobs_reference(x: torch.Tensor, weight: torch.Tensor | None, token_ids: torch.Tensor) -> torch.Tensor:
    """log p(token | row) for each row and each token of the set: [R, S], float32 (float64 in, float64 out)."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    logits = x.to(dtype) @ weight.to(dtype).T if weight is not None else x.to(dtype)
    return torch.log_softmax(logits, dim=-1)[:, token_ids.long()]


def token_logprobs_triton(x: torch.Tensor, weight: torch.Tensor | None, token_ids: torch.Tensor) -> torch.Tensor:
    if not HAVE_TRITON:
        raise RuntimeError("Triton is not installed")
    ids = token_ids.long()
    if weight is None:
        return x.gather(1, ids.unsqueeze(0).expand(x.shape[0], -1)).float() - logsumexp_triton(x)[:, None]
    return lm_head_set_logprobs_triton(x, weight, ids)


def token_logprobs(x: torch.Tensor, weight: torch.Tensor | None, token_ids: torch.Tensor) -> torch.Tensor:
    """Dispatcher: Triton on CUDA tensors, the reference elsewhere."""
    if x.is_cuda and HAVE_TRITON:
        return token_logprobs_triton(x, weight, token_ids)
    return token_logprobs_reference(x, weight, token_ids)


def expected_score(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    token_ids: torch.Tensor,
    values: torch.Tensor,
    renormalize: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities of the set [R, S], expected value of `values` under them [R])."""
    probs = token_logprobs(x, weight, token_ids).exp()
    if renormalize:
        probs = probs / probs.sum(dim=1, keepdim=True)
    return probs, probs @ values.to(probs.dtype)
