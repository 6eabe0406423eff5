"""Checks every core applies to request values, whichever door they came through; each names the field it refuses."""

from __future__ import annotations

import math

from proctor.engine.errors import ItemError


def check_range(value: float, field: str, low: float, high: float, *, low_open: bool = False) -> float:
    if not math.isfinite(value):
        raise ItemError(f"must be a finite number, got {value}", field)
    if value < low or (low_open and value == low) or value > high:
        bracket = "(" if low_open else "["
        raise ItemError(f"{value} is outside {bracket}{low}, {high}]", field)
    return value


def token_ids(ids: list[int], field: str, vocab_size: int) -> list[int]:
    if ids and (min(ids) < 0 or max(ids) >= vocab_size):  # in C; the Python scan only to name the bad one
        i, t = next((i, t) for i, t in enumerate(ids) if not 0 <= t < vocab_size)
        raise ItemError(f"token id {t} is outside the vocabulary [0, {vocab_size})", f"{field}[{i}]")
    return ids


# The token ids one position may probe: the fused lm_head kernel's bound (kernels/lm_head_logprobs.py's MAX_PROBES; a
# test holds them equal), and vLLM's for prompt_logprob_token_ids.
MAX_PROBES = 128


def probe_row(ids: list[int], field: str, vocab_size: int) -> list[int]:
    if len(ids) > MAX_PROBES:
        raise ItemError(
            f"{len(ids)} token ids > {MAX_PROBES}, the most one position may probe; nothing is truncated", field
        )
    return token_ids(ids, field, vocab_size)


def probe_rows(rows: list[list[int]], field: str, vocab_size: int, positions: int) -> list[list[int]]:
    """Token ids to probe per target position: at most one row a position, each row a `probe_row`."""
    if len(rows) > positions:
        raise ItemError(f"{len(rows)} rows for {positions} target positions: at most one row a position", field)
    for i, row in enumerate(rows):
        probe_row(row, f"{field}[{i}]", vocab_size)
    return rows
