"""Critic cut-offs read off a precision-recall curve (PAPERS.md §1.3). A triple is kept when score > cut-off."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

TARGET_RECALLS = {"high": 0.5, "medium": 0.8}  # "high" filtration keeps less
CUTOFFS_FILE = "proctor_cutoffs.json"  # beside a trained critic: {"high": {"threshold": ...}, "medium": ...}


@dataclass(frozen=True)
class Cutoff:
    threshold: float
    recall: float
    precision: float


def cutoff_at_recall(scores: Sequence[float], labels: Sequence[bool], recall: float) -> Cutoff:
    """The highest threshold whose kept set (score > threshold) reaches `recall` of the positives."""
    if len(scores) != len(labels):
        raise ValueError("scores and labels differ in length")
    positives = sorted((s for s, y in zip(scores, labels, strict=True) if y), reverse=True)
    if not positives:
        raise ValueError("no positive example: recall is undefined")
    if not 0 < recall <= 1:
        raise ValueError(f"recall must lie in (0, 1], got {recall}")
    needed = math.ceil(recall * len(positives) - 1e-9)
    lowest_kept = positives[needed - 1]
    below = [s for s in scores if s < lowest_kept]
    threshold = max(below) if below else math.nextafter(lowest_kept, -math.inf)
    kept = [(s, y) for s, y in zip(scores, labels, strict=True) if s > threshold]
    true_positive = sum(1 for _, y in kept if y)
    return Cutoff(threshold, true_positive / len(positives), true_positive / len(kept))


def cutoffs(scores: Sequence[float], labels: Sequence[bool]) -> dict[str, Cutoff]:
    return {name: cutoff_at_recall(scores, labels, r) for name, r in TARGET_RECALLS.items()}
