"""The fused lm_head over a Score batch's rows with token-id probes per row (a student's top-k per position), as the
torch backend and the vLLM hidden-state scorer both call it.

The kernel probes every row it scores ([N, P] ids: their logits picked out of the lm_head's own tiles, minus the same
pass's log-sum-exp; kernels/probe_logprobs.py), so when a batch mixes rows with probes and rows without, the two
kinds go in two calls: only the probed rows pay for probes (the host's sort of their ids, the passes over the tiles
that hold them, and beside a 64-slot top-k or a rank a narrower tile), and every row still goes through one
lm_head pass.
"""

from __future__ import annotations

import torch

from proctor.engine.items import ScoreItem
from proctor.kernels import lm_head_logprobs
from proctor.kernels.lm_head_logprobs import Result


def probe_rows(item: ScoreItem) -> list[list[int]]:
    """The item's probes, one row per target position ([] where it probes nothing)."""
    rows = item.probe_ids or []
    return rows + [[] for _ in range(len(item.target_ids) - len(rows))]


def fused_scores(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    top_k: int,
    rank_out: torch.Tensor | None,
    probes: list[list[int]] | None,
) -> tuple[Result, list[list[float]] | None]:
    """`lm_head_logprobs` (no entropies) of the rows of `hidden` [N, H] and their `targets` [N]; with `probes` (one
    list of token ids per row, [] for none) also each row's probes' log-probs, ragged as `probes`."""
    if probes is None or not any(probes):
        result = lm_head_logprobs(hidden, weight, targets, top_k, rank_out=rank_out, entropy=False)
        return result, None if probes is None else [[] for _ in probes]
    width = max(map(len, probes))
    # A short row repeats its first id up to the widest: those slots are computed and dropped (no distinct id more).
    ids = torch.tensor([row + row[:1] * (width - len(row)) for row in probes if row], device=hidden.device)
    out = torch.empty(ids.shape, dtype=torch.float32, device=hidden.device)
    probed = [r for r, row in enumerate(probes) if row]
    if len(probed) == len(probes):
        result = lm_head_logprobs(hidden, weight, targets, top_k, rank_out=rank_out, entropy=False, probes=(ids, out))
    else:
        result = _split(hidden, weight, targets, top_k, rank_out, probed, (ids, out))
    values = iter(out.cpu().tolist())
    return result, [next(values)[: len(row)] if row else [] for row in probes]


def _split(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    top_k: int,
    rank_out: torch.Tensor | None,
    probed: list[int],
    probes: tuple[torch.Tensor, torch.Tensor],
) -> Result:
    """One call on the rows `probed` (with `probes`), one on the others; their results put back in row order."""
    n = hidden.shape[0]
    others = torch.ones(n, dtype=torch.bool)
    others[probed] = False
    parts = [torch.tensor(probed), others.nonzero()[:, 0]]
    merged: list[torch.Tensor | None] = [None, None, None]  # log-probs, top-k values, top-k ids

    def put(at: int, rows: torch.Tensor, part: torch.Tensor | None) -> None:
        if part is None:
            return
        whole = merged[at]
        if whole is None:
            whole = merged[at] = torch.empty((n, *part.shape[1:]), dtype=part.dtype, device=part.device)
        whole[rows] = part

    for rows, with_probes in zip(parts, (probes, None), strict=True):
        rows = rows.to(hidden.device)
        rank = None if rank_out is None else torch.empty(len(rows), dtype=torch.long, device=hidden.device)
        lp, _, top_vals, top_ids = lm_head_logprobs(
            hidden[rows], weight, targets[rows], top_k, rank_out=rank, entropy=False, probes=with_probes
        )
        if rank_out is not None and rank is not None:
            rank_out[rows] = rank
        for at, part in enumerate((lp, top_vals, top_ids)):
            put(at, rows, part)
    logprobs, top_vals, top_ids = merged
    assert logprobs is not None
    return logprobs, None, top_vals, top_ids
