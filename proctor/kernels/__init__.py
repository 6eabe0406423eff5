"""Scoring kernels: pure functions on tensors, each file a Triton kernel beside its plain-torch reference.

The un-suffixed names dispatch: Triton for CUDA tensors, the reference elsewhere.
"""

from proctor.kernels.expected_score import (
    expected_score,
    token_logprobs,
    token_logprobs_reference,
    token_logprobs_triton,
)
from proctor.kernels.lm_head_logprobs import lm_head_logprobs, lm_head_logprobs_reference, lm_head_logprobs_triton
from proctor.kernels.target_logprobs import target_logprobs, target_logprobs_reference, target_logprobs_triton

__all__ = [
    "expected_score",
    "lm_head_logprobs",
    "lm_head_logprobs_reference",
    "lm_head_logprobs_triton",
    "target_logprobs",
    "target_logprobs_reference",
    "target_logprobs_triton",
    "token_logprobs",
    "token_logprobs_reference",
    "token_logprobs_triton",
]
