"""hidden [N, H] x lm_head weight [V, H] -> log p(target) per row, optional top-k.

The reference works in row chunks so that it never holds more than `chunk_rows x V` float32 logits at once
(a [tokens, vocab] fp32 tensor is what makes naive prompt log-probs run out of memory).
"""

from __future__ import annotations

import torch


def lm_head_logprobs_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    top_k: int = 0,
    chunk_rows: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Return (target log-probs [N] fp32, top-k log-probs [N, k] fp32 or None, top-k ids [N, k] int64 or None)."""
    n = hidden.shape[0]
    out = torch.empty(n, dtype=torch.float32, device=hidden.device)
    top_vals = torch.empty(n, top_k, dtype=torch.float32, device=hidden.device) if top_k else None
    top_ids = torch.empty(n, top_k, dtype=torch.int64, device=hidden.device) if top_k else None
    w = weight.float()
    for start in range(0, n, chunk_rows):
        rows = slice(start, start + chunk_rows)
        logprobs = torch.log_softmax(hidden[rows].float() @ w.T, dim=-1)
        out[rows] = logprobs.gather(1, targets[rows].long().unsqueeze(1)).squeeze(1)
        if top_vals is not None and top_ids is not None:
            vals, ids = logprobs.topk(top_k, dim=-1)
            top_vals[rows] = vals
            top_ids[rows] = ids
    return out, top_vals, top_ids
