"""logits [N, V] (any float dtype) -> log p(target) [N], entropy [N] and optional top-k (k <= 64), float32, in
one pass over the vocabulary.

The Triton kernel keeps an online log-sum-exp per row (running max, rescaled sum of exponentials and of
x * exp(x)), so it reads each logit once and never writes a [N, V] float32 tensor; with top-k it also keeps each
vocabulary tile's best k, and a final top-k over those N x (V / BLOCK_V) x k candidates picks the winners.
Rows whose target is `ignore_index` get 0.0 log-prob and entropy (their top-k is still reported).
`target_logprobs_reference` is the plain-torch definition it must match.
"""

from __future__ import annotations

import torch

from proctor.kernels.buffers import poisoned

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is optional: the reference serves CPU tensors
    triton = None


Result = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]


def target_logprobs_reference(
    logits: torch.Tensor, targets: torch.Tensor, top_k: int = 0, ignore_index: int = -100
) -> Result:
    """(log-prob of target [N], entropy [N], top-k log-probs [N, k] or None, top-k ids [N, k] or None)."""
    logprobs = torch.log_softmax(logits.float() if logits.dtype != torch.float64 else logits, dim=-1)
    keep = targets != ignore_index
    picked = logprobs.gather(1, torch.where(keep, targets, 0).long().unsqueeze(1)).squeeze(1)
    entropy = -(logprobs.exp() * logprobs).nansum(dim=-1)
    zero = torch.zeros_like(picked)
    vals, ids = logprobs.topk(top_k, dim=-1) if top_k else (None, None)
    return torch.where(keep, picked, zero), torch.where(keep, entropy, zero), vals, ids


if triton is not None:

    @triton.jit  # type: ignore[untyped-decorator]
    def _target_logprobs_kernel(  # type: ignore[no-untyped-def]
        logits_ptr,
        stride_row,
        targets_ptr,
        out_ptr,
        entropy_ptr,
        lse_ptr,
        topv_ptr,
        topi_ptr,
        vocab,
        n_tiles,
        ignore_index,
        BLOCK_V: tl.constexpr,
        K_PAD: tl.constexpr,
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
            if K_PAD > 0:  # this tile's best K_PAD, by repeated arg-max (K_PAD <= 64)
                slots = tl.arange(0, K_PAD)
                best_v = tl.full((K_PAD,), -float("inf"), tl.float32)
                best_i = tl.zeros((K_PAD,), tl.int32)
                cand = x
                for j in range(K_PAD):
                    m = tl.max(cand, axis=0)
                    a = tl.argmax(cand, axis=0)
                    best_v = tl.where(slots == j, m, best_v)
                    best_i = tl.where(slots == j, start + a, best_i)
                    cand = tl.where(tl.arange(0, BLOCK_V) == a, -float("inf"), cand)
                first = (row * n_tiles + start // BLOCK_V) * K_PAD
                tl.store(topv_ptr + first + slots, best_v)
                tl.store(topi_ptr + first + slots, best_i)
        lse = running_max + tl.log(sum_exp)
        tl.store(lse_ptr + row, lse)
        keep = target != ignore_index
        tl.store(out_ptr + row, tl.where(keep, target_logit - lse, 0.0))
        tl.store(entropy_ptr + row, tl.where(keep, lse - sum_x_exp / sum_exp, 0.0))


def _launch(
    logits: torch.Tensor, targets: torch.Tensor, top_k: int, ignore_index: int, block_v: int
) -> tuple[torch.Tensor, ...]:
    """Run the kernel: (log-prob, entropy, log-sum-exp, tile top-k values, tile top-k ids)."""
    if triton is None:
        raise RuntimeError("Triton is not installed")
    if logits.ndim != 2 or logits.stride(1) != 1:
        raise ValueError("logits must be a row-major [N, V] tensor")
    if not 0 <= top_k <= 64:
        raise ValueError(f"top_k must lie in [0, 64], got {top_k}")
    n, vocab = logits.shape
    block = min(block_v, triton.next_power_of_2(vocab))
    tiles = triton.cdiv(vocab, block)
    k_pad = triton.next_power_of_2(top_k) if top_k else 0
    dev = logits.device

    out, entropy, lse = poisoned(n, device=dev), poisoned(n, device=dev), poisoned(n, device=dev)
    top_v = poisoned(n, tiles, max(k_pad, 1), device=dev)
    top_i = poisoned(n, tiles, max(k_pad, 1), device=dev, dtype=torch.int32)
    if n:
        _target_logprobs_kernel[(n,)](
            logits, logits.stride(0), targets, out, entropy, lse, top_v, top_i, vocab, tiles, ignore_index,
            BLOCK_V=block, K_PAD=k_pad,
        )  # fmt: skip
    return out, entropy, lse, top_v, top_i


def target_logprobs_triton(
    logits: torch.Tensor, targets: torch.Tensor, top_k: int = 0, ignore_index: int = -100, block_v: int = 4096
) -> Result:
    out, entropy, lse, top_v, top_i = _launch(logits, targets, top_k, ignore_index, block_v)
    if not top_k:
        return out, entropy, None, None
    vals, pick = top_v.flatten(1).topk(top_k, dim=1)
    return out, entropy, vals - lse[:, None], top_i.flatten(1).gather(1, pick).long()


def logsumexp_triton(logits: torch.Tensor, block_v: int = 4096) -> torch.Tensor:
    """Per-row log-sum-exp in float32, one read of the logits."""
    ignored = torch.full((logits.shape[0],), -100, dtype=torch.int64, device=logits.device)
    return _launch(logits, ignored, 0, -100, block_v)[2]


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor, top_k: int = 0, ignore_index: int = -100) -> Result:
    """Dispatcher: the Triton kernel on CUDA tensors, the reference elsewhere."""
    if logits.is_cuda and triton is not None:
        return target_logprobs_triton(logits, targets, top_k, ignore_index)
    return target_logprobs_reference(logits, targets, top_k, ignore_index)
