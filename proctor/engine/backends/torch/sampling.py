"""Per-row sampling on a batch of next-token logits, each row with its own parameters.

Penalties follow the OpenAI / vLLM definition over the tokens generated so far (not the prompt):
logit -= frequency_penalty * count + presence_penalty * (count > 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RowParams:
    temperature: torch.Tensor  # [B] float32; 0 = greedy
    top_p: torch.Tensor  # [B] float32
    top_k: torch.Tensor  # [B] int64; 0 = off
    presence_penalty: torch.Tensor  # [B] float32
    frequency_penalty: torch.Tensor  # [B] float32


def apply_penalties(logits: torch.Tensor, counts: torch.Tensor, params: RowParams) -> torch.Tensor:
    return (
        logits
        - params.frequency_penalty.unsqueeze(1) * counts
        - params.presence_penalty.unsqueeze(1) * (counts > 0).to(logits.dtype)
    )


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask (to -inf) everything outside each row's top-k and nucleus; the most likely token always survives."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    vocab = logits.shape[-1]
    ranks = torch.arange(vocab, device=logits.device).unsqueeze(0)
    k = torch.where(top_k > 0, top_k, torch.full_like(top_k, vocab)).unsqueeze(1)
    masked = ranks >= k
    probs = torch.softmax(sorted_logits.masked_fill(masked, float("-inf")), dim=-1)
    # A token is outside the nucleus when the tokens ranked above it already reach top_p.
    masked |= (probs.cumsum(dim=-1) - probs) >= top_p.unsqueeze(1)
    masked[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(masked, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def sample(
    logits: torch.Tensor,
    counts: torch.Tensor,
    params: RowParams,
    generators: list[torch.Generator],
) -> torch.Tensor:
    """Next token per row [B] (int64). `logits` are float32 [B, V]; `counts` [B, V] generated-token counts."""
    processed = apply_penalties(logits, counts, params)
    greedy = params.temperature == 0
    tokens = processed.argmax(dim=-1)
    if bool(greedy.all()):
        return tokens
    temperature = torch.where(greedy, torch.ones_like(params.temperature), params.temperature)
    processed = apply_top_k_top_p(processed / temperature.unsqueeze(1), params.top_k, params.top_p)
    probs = torch.softmax(processed, dim=-1)
    for row, generator in enumerate(generators):
        if not bool(greedy[row]):
            tokens[row] = torch.multinomial(probs[row], 1, generator=generator)[0]
    return tokens
