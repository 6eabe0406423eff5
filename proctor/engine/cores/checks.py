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
