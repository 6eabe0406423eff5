"""Top-k up to MAX_TOP_K from a kernel's per-split candidates, exact, with ties ranked by token id (the lower id
first, as a stable sort of the logits ranks them).

A kernel keeps a running top-k of at most RUNNING_SLOTS per row in registers (kernels/topk.py) for each split of
the vocabulary it scans. The k best of the union of the splits' candidates are the row's k best unless a split
had more of them than it kept: its least kept value (its floor) is then at or above the k-th best. Such a row is
"unsure" and is answered exactly from its own logits (`top_k_ties_by_id`, a bounded chunk of rows); with random
or real vocabularies and k <= 256 over 33 splits of 64 slots it is rare (a split holds ~8 of the best 256). Ties at
the k-th value land there too when they can matter: with k > slots always, with k <= slots when the chosen show a
tie. Not caught: k <= 64, one split holding the whole top-k, and an exact copy of the k-th value that its running
top-k dropped for an equal one (it keeps the first it merges, even columns before odd ones).
"""

from __future__ import annotations

import torch

MAX_TOP_K = 256  # the most top log-probs a position may ask for (teacher.max_top_logprobs' default)
RUNNING_SLOTS = 64  # a split's running top-k in registers: top-k 65-256 is gathered from the splits' 64 each


def order_by_value_then_id(values: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of (values, ids) sorted by value, descending, then by id, ascending."""
    by_id, at = ids.sort(dim=1)
    vals, order = values.gather(1, at).sort(dim=1, descending=True, stable=True)
    return vals, by_id.gather(1, order)


def select_from_candidates(
    values: torch.Tensor, ids: torch.Tensor, slots: int, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the k best values [R, k], their ids, unsure rows [R] bool) from candidates [R, splits * slots], each
    split's `slots` kept values in a row (-inf in slots it could not fill). Fewer candidates than k (a vocabulary
    of a few tiles, so a few splits of `slots` each, with k above them) cannot hold a top-k: every row is unsure,
    to be answered from its own logits."""
    if values.shape[1] < k:
        rows, device = values.shape[0], values.device
        unsure = torch.ones(rows, dtype=torch.bool, device=device)
        return values.new_full((rows, k), -float("inf")), ids.new_zeros((rows, k)), unsure
    vals, order = order_by_value_then_id(values, ids)
    vals, picked = vals[:, :k], order[:, :k]
    floor = values.view(values.shape[0], -1, slots).min(dim=2).values
    kth = vals[:, -1:]
    # Equal to the k-th: with k <= slots a split that holds the whole top-k always is (k = 1: the max's split);
    # only a tie seen among the chosen makes that row unsure. With k > slots, a split that kept only values
    # at or above the k-th may have dropped more.
    tie = (vals == kth).sum(dim=1, keepdim=True) > 1 if k <= slots else torch.ones_like(kth, dtype=torch.bool)
    unsure = ((floor > -float("inf")) & ((floor > kth) | ((floor == kth) & tie))).any(dim=1)
    return vals, picked, unsure


def top_k_ties_by_id(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest of each row of x [R, V] and their ids, ties ranked by id. torch.topk gives the right values
    but picks among equal ones freely: where the (k + 1)-th value equals the k-th, a copy of it was left out and
    which one matters, so that row is sorted (stable) instead."""
    more = min(k + 1, x.shape[1])
    vals, ids = x.topk(more, dim=1)
    short = vals[:, k - 1] == vals[:, more - 1] if more > k else torch.zeros_like(vals[:, 0], dtype=torch.bool)
    vals, ids = order_by_value_then_id(vals[:, :k], ids[:, :k])
    if bool(short.any()):
        rows = short.nonzero()[:, 0]
        exact, at = x[rows].sort(dim=1, descending=True, stable=True)
        vals[rows], ids[rows] = exact[:, :k], at[:, :k]
    return vals, ids


def check_top_k(top_k: int, vocab: int) -> None:
    if not 0 <= top_k <= MAX_TOP_K:
        raise ValueError(f"top_k must lie in [0, {MAX_TOP_K}], got {top_k}")
    if top_k > vocab:
        raise ValueError(f"top_k {top_k} exceeds the vocabulary ({vocab})")
