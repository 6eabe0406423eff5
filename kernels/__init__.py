"""Scoring kernels: pure functions on tensors, each file a Triton kernel beside its plain-torch reference."""

from proctor.kernels.lm_head_logprobs import lm_head_logprobs_reference

__all__ = ["lm_head_logprobs_reference"]
