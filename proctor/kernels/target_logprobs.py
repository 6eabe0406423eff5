"""logits [N, V] (any float dtype) -> log p(target) [N], entropy [N] and optional top-k (k <= 256), float32, in
one pass over the vocabulary (top-k 65-256: a second read of the logits, `target_logprobs_triton`).

The Triton kernel (one program per row) keeps an online log-sum-exp per row (running max, rescaled sum of
exponentials and of x * exp(x)), so it reads each logit once and never writes a [N, V] float32 tensor; with top-k
it also keeps the row's running best k (kernels/topk.py: a tile is merged only through its values above the current
k-th best, so after the first tiles most tiles cost one compare per logit), and writes just [N, k].
Rows whose target is `ignore_index` get 0.0 log-prob and entropy (their top-k is still reported).
`target_logprobs_reference` is the plain-torch definition it must match.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from proctor.kernels.buffers import poisoned
from proctor.kernels.topk_select import RUNNING_SLOTS, check_top_k, order_by_value_then_id, top_k_ties_by_id

try:
    import triton
    import triton.language as tl

    from proctor.kernels.topk import topk_init, topk_merge
except ImportError:  # Triton is optional: the reference serves CPU tensors
    triton = None


Result = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]


def target_logprobs_reference(
    logits: torch.Tensor,
    targets: torch.Tensor,
    top_k: int = 0,
    ignore_index: int = -100,
    entropy: bool = True,
    probe_ids: torch.Tensor | None = None,
    probe_out: torch.Tensor | None = None,
) -> Result:
    """(log-prob of target [N], entropy [N] or None, top-k log-probs [N, k] or None, top-k ids [N, k] or None).

    Only what is asked is computed: the log-softmax (torch's fused kernel: on the CPU faster than a log-sum-exp
    alone), the targets' entries and the top-k (ties by id); the entropy (another exp pass and a product over
    [N, V]) only with `entropy`. With `probe_ids` [N, P] each row's log-probs of those tokens go to `probe_out`."""
    logprobs = torch.log_softmax(logits.float() if logits.dtype != torch.float64 else logits, dim=-1)
    keep = targets != ignore_index
    picked = logprobs.gather(1, torch.where(keep, targets, 0).long().unsqueeze(1)).squeeze(1)
    zero = torch.zeros_like(picked)
    ent = torch.where(keep, -(logprobs.exp() * logprobs).nansum(dim=-1), zero) if entropy else None
    vals, ids = top_k_ties_by_id(logprobs, top_k) if top_k else (None, None)
    if probe_ids is not None and probe_out is not None:
        probe_out.copy_(logprobs.gather(1, probe_ids.long()))
    return torch.where(keep, picked, zero), ent, vals, ids


def target_ranks_reference(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Each target's rank [N] (int64): the logits at or above its own, itself included, as vLLM v1 ranks a token
    (`batched_count_greater_than`); 0 on ignore-index rows."""
    keep = targets != ignore_index
    own = logits.gather(1, torch.where(keep, targets, 0).long().unsqueeze(1))
    return torch.where(keep, (logits >= own).sum(dim=1), 0)


if triton is not None:

    @triton.jit  # type: ignore[untyped-decorator]
    def _target_logprobs_kernel(  # type: ignore[no-untyped-def]
        logits_ptr,
        targets_ptr,
        out_ptr,
        entropy_ptr,
        lse_ptr,
        topv_ptr,
        topi_ptr,
        stride_row,
        vocab,
        ignore_index,
        BLOCK_V: tl.constexpr,
        K: tl.constexpr,
        K_PAD: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        one = tl.arange(0, 1)  # rows of this program: [1]-shaped vectors share kernels/topk.py with the lm_head kernel
        target = tl.load(targets_ptr + row + one).to(tl.int32)
        base = logits_ptr + row * stride_row
        run_max = tl.full((1,), -float("inf"), tl.float32)
        sum_exp = tl.zeros((1,), tl.float32)
        sum_x_exp = tl.zeros((1,), tl.float32)
        target_logit = tl.zeros((1,), tl.float32)
        if K_PAD > 0:
            best_v, best_i, theta = topk_init(1, K, K_PAD)
        for start in range(0, vocab, BLOCK_V):
            offsets = start + tl.arange(0, BLOCK_V)
            inside = offsets < vocab
            x = tl.load(base + offsets[None, :], mask=inside[None, :], other=-float("inf")).to(tl.float32)
            new_max = tl.maximum(run_max, tl.max(x, axis=1))
            # exp(-inf - finite) = 0 on the first tile, never NaN: new_max is finite once a real logit is seen.
            rescale = tl.exp(run_max - new_max)
            e = tl.exp(x - new_max[:, None])
            sum_exp = sum_exp * rescale + tl.sum(e, axis=1)
            sum_x_exp = sum_x_exp * rescale + tl.sum(e * tl.where(inside[None, :], x, 0.0), axis=1)
            target_logit += tl.sum(tl.where(offsets[None, :] == target[:, None], x, 0.0), axis=1)
            run_max = new_max
            if K_PAD > 0:
                best_v, best_i, theta = topk_merge(x, start, best_v, best_i, theta, K_PAD, BLOCK_V)
        lse = run_max + tl.log(sum_exp)
        tl.store(lse_ptr + row + one, lse)
        keep = target != ignore_index
        tl.store(out_ptr + row + one, tl.where(keep, target_logit - lse, 0.0))
        tl.store(entropy_ptr + row + one, tl.where(keep, lse - sum_x_exp / sum_exp, 0.0))
        if K_PAD > 0:
            slots = tl.arange(0, K_PAD)
            tl.store(topv_ptr + row * K + slots[None, :], best_v - lse[:, None], slots[None, :] < K)
            tl.store(topi_ptr + row * K + slots[None, :], best_i, slots[None, :] < K)


POINTERS = ("logits_ptr", "targets_ptr", "out_ptr", "entropy_ptr", "lse_ptr", "topv_ptr", "topi_ptr")


@dataclass(frozen=True)
class LogitsLaunch:
    """One launch of the logits kernel: one program per row, BLOCK_V logits per step."""

    rows: int
    block_v: int
    num_warps: int
    num_stages: int
    top_k: int

    @property
    def k_pad(self) -> int:
        return 1 << (self.top_k - 1).bit_length() if self.top_k else 0


def logits_launch(rows: int, vocab: int, top_k: int, block_v: int = 4096) -> LogitsLaunch:
    block = min(block_v, 1 << max(vocab - 1, 1).bit_length())
    return LogitsLaunch(rows, block, num_warps=4, num_stages=3, top_k=top_k)


def kernel_arguments(launch: LogitsLaunch, vocab: int, stride_row: int) -> tuple[dict[str, int], dict[str, object]]:
    """(integer arguments, constexprs) of one launch: what `_launch` passes, and what bench/hopper.py compiles."""
    ints = {"stride_row": stride_row, "vocab": vocab, "ignore_index": -100}
    return ints, {"BLOCK_V": launch.block_v, "K": launch.top_k, "K_PAD": launch.k_pad}


def _launch(
    logits: torch.Tensor, targets: torch.Tensor, top_k: int, ignore_index: int, block_v: int
) -> tuple[torch.Tensor, ...]:
    """Run the kernel: (log-prob, entropy, log-sum-exp, top-k log-probs [N, k], top-k ids [N, k] int32)."""
    if triton is None:
        raise RuntimeError("Triton is not installed")
    if logits.ndim != 2 or logits.stride(1) != 1:
        raise ValueError("logits must be a row-major [N, V] tensor")
    n, vocab = logits.shape
    check_top_k(top_k, vocab)
    if top_k > RUNNING_SLOTS:
        raise ValueError(f"the kernel's running top-k holds at most {RUNNING_SLOTS}, got {top_k}")
    launch = logits_launch(n, vocab, top_k, block_v)
    dev = logits.device
    out, entropy, lse = poisoned(n, device=dev), poisoned(n, device=dev), poisoned(n, device=dev)
    top_v = poisoned(n, max(top_k, 1), device=dev)
    top_i = poisoned(n, max(top_k, 1), device=dev, dtype=torch.int32)
    if n:
        ints, consts = kernel_arguments(launch, vocab, logits.stride(0))
        ints["ignore_index"] = ignore_index
        _target_logprobs_kernel[(n,)](
            logits, targets, out, entropy, lse, top_v, top_i, **ints, **consts,
            num_warps=launch.num_warps, num_stages=launch.num_stages,
        )  # fmt: skip
    return out, entropy, lse, top_v, top_i


def target_logprobs_triton(
    logits: torch.Tensor,
    targets: torch.Tensor,
    top_k: int = 0,
    ignore_index: int = -100,
    block_v: int = 4096,
    entropy: bool = True,
    chunk_rows: int = 1024,
) -> Result:
    """Up to RUNNING_SLOTS the kernel's running top-k (exact: one program sees the whole row, and among equal values
    keeps the first it meets, the lowest id); past it (65-256) the kernel gives the log-sum-exp and torch's top-k
    of the given logits, chunk_rows at a time, ties by id (`top_k_ties_by_id`): nothing [N, V] is made."""
    check_top_k(top_k, logits.shape[1] if logits.ndim == 2 else 0)
    in_kernel = top_k if top_k <= RUNNING_SLOTS else 0
    out, ent, lse, top_v, top_i = _launch(logits, targets, in_kernel, ignore_index, block_v)
    ent_or_none = ent if entropy else None
    if not top_k:
        return out, ent_or_none, None, None
    if in_kernel:
        vals, ids = order_by_value_then_id(top_v, top_i.long())  # the kernel's slots are in no order
        return out, ent_or_none, vals, ids
    picked = [top_k_ties_by_id(logits[s : s + chunk_rows], top_k) for s in range(0, logits.shape[0], chunk_rows)]
    vals = torch.cat([v for v, _ in picked]).float() - lse[:, None] if picked else top_v[:, :0]
    ids = torch.cat([i for _, i in picked]) if picked else top_i[:, :0].long()
    return out, ent_or_none, vals, ids


def logsumexp_triton(logits: torch.Tensor, block_v: int = 4096) -> torch.Tensor:
    """Per-row log-sum-exp in float32, one read of the logits."""
    ignored = torch.full((logits.shape[0],), -100, dtype=torch.int64, device=logits.device)
    return _launch(logits, ignored, 0, -100, block_v)[2]


def target_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, top_k: int = 0, ignore_index: int = -100, entropy: bool = True
) -> Result:
    """Dispatcher: the Triton kernel on CUDA tensors, the reference elsewhere."""
    if logits.is_cuda and triton is not None:
        return target_logprobs_triton(logits, targets, top_k, ignore_index, entropy=entropy)
    return target_logprobs_reference(logits, targets, top_k, ignore_index, entropy)
