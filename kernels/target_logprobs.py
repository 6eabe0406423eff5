"""logits [N, V] (any float dtype) -> log p(target) [N] and entropy [N], float32, in one pass over the vocabulary.

The Triton kernel keeps an online log-sum-exp per row (running max, rescaled sum of exponentials and of
x * exp(x)), so it reads each logit once and never writes a [N, V] float32 tensor. Rows whose target is
`ignore_index` get 0.0 for both outputs. `target_logprobs_reference` is the plain-torch definition it must match.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is optional: the reference serves CPU tensors
    triton = None


def target_logprobs_reference(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100
) -> tuple[torch.Tensor, torch.Tensor]:
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    keep = targets != ignore_index
    picked = logprobs.gather(1, torch.where(keep, targets, 0).long().unsqueeze(1)).squeeze(1)
    entropy = -(logprobs.exp() * logprobs).nansum(dim=-1)
    zero = torch.zeros_like(picked)
    return torch.where(keep, picked, zero), torch.where(keep, entropy, zero)


if triton is not None:

    @triton.jit  # type: ignore[untyped-decorator]
    def _target_logprobs_kernel(  # type: ignore[no-untyped-def]
        logits_ptr,
        stride_row,
        targets_ptr,
        out_ptr,
        entropy_ptr,
        vocab,
        ignore_index,
        BLOCK_V: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        target = tl.load(targets_ptr + row).to(tl.int64)
        base = logits_ptr + row * stride_row
        running_max = tl.full((), -float("inf"), tl.float32)
        sum_exp = tl.zeros((), tl.float32)
        sum_x_exp = tl.zeros((), tl.float32)
        target_logit = tl.zeros((), tl.float32)
        for start in range(0, vocab, BLOCK_V):
            offsets = start + tl.arange(0, BLOCK_V)
            inside = offsets < vocab
            x = tl.load(base + offsets, mask=inside, other=-float("inf")).to(tl.float32)
            new_max = tl.maximum(running_max, tl.max(x, axis=0))
            # exp(-inf - finite) = 0 on the first tile, never NaN: new_max is finite once a real logit is seen.
            rescale = tl.exp(running_max - new_max)
            e = tl.where(inside, tl.exp(x - new_max), 0.0)
            sum_exp = sum_exp * rescale + tl.sum(e, axis=0)
            sum_x_exp = sum_x_exp * rescale + tl.sum(e * tl.where(inside, x, 0.0), axis=0)
            target_logit += tl.sum(tl.where(offsets == target, x, 0.0), axis=0)
            running_max = new_max
        lse = running_max + tl.log(sum_exp)
        keep = target != ignore_index
        tl.store(out_ptr + row, tl.where(keep, target_logit - lse, 0.0))
        tl.store(entropy_ptr + row, tl.where(keep, lse - sum_x_exp / sum_exp, 0.0))


def target_logprobs_triton(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100, block_v: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    if triton is None:
        raise RuntimeError("Triton is not installed")
    if logits.ndim != 2 or logits.stride(1) != 1:
        raise ValueError("logits must be a row-major [N, V] tensor")
    n, vocab = logits.shape
    out = torch.full((n,), float("nan"), dtype=torch.float32, device=logits.device)
    entropy = torch.full((n,), float("nan"), dtype=torch.float32, device=logits.device)
    if n:
        _target_logprobs_kernel[(n,)](
            logits, logits.stride(0), targets, out, entropy, vocab, ignore_index,
            BLOCK_V=min(block_v, triton.next_power_of_2(vocab)),
        )  # fmt: skip
    return out, entropy


def target_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatcher: the Triton kernel on CUDA tensors, the reference elsewhere."""
    if logits.is_cuda and triton is not None:
        return target_logprobs_triton(logits, targets, ignore_index)
    return target_logprobs_reference(logits, targets, ignore_index)
