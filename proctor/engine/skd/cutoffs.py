"""Critic cut-offs by the authors' rule (paper rules §1.3-1.4). A triple is kept when its score is > the cut-off.

The precision-recall curve is the one the authors read (scikit-learn's `precision_recall_curve`): thresholds are the
distinct scores in ascending order, and the recall at a threshold counts the positives scoring >= it. The cut-off
for a target recall is the lowest threshold whose recall is <= the target (the first such point of the curve).
With a test set as well, the cut-off is the mean of the validation and the test cut-offs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

TARGET_RECALLS = {"high": 0.5, "medium": 0.8}  # "high" filtration keeps less
CUTOFFS_FILE = "proctor_cutoffs.json"  # beside a trained critic: {"high": {"threshold": ...}, "medium": ...}


@dataclass(frozen=True)
class CurvePoint:
    threshold: float
    recall: float  # of the positives scoring >= threshold
    precision: float  # of everything scoring >= threshold


@dataclass(frozen=True)
class Cutoff:
    threshold: float  # what a triple's score must exceed
    validation: CurvePoint  # the curve point the threshold came from
    test: CurvePoint | None = None  # with a test set: its point; threshold = the mean of the two


def precision_recall_curve(scores: Sequence[float], labels: Sequence[bool]) -> list[CurvePoint]:
    """One point per distinct score, ascending (linear after the sort)."""
    if len(scores) != len(labels):
        raise ValueError(f"scores and labels differ in length ({len(scores)}, {len(labels)})")
    positives = sum(1 for y in labels if y)
    if not positives:
        raise ValueError("no positive example: recall is undefined")
    ranked = sorted(zip(scores, labels, strict=True), key=lambda pair: pair[0], reverse=True)
    points: list[CurvePoint] = []
    true_positives = 0
    for i, (score, label) in enumerate(ranked):
        true_positives += label
        if i + 1 == len(ranked) or ranked[i + 1][0] != score:  # the last of a run of equal scores
            points.append(CurvePoint(score, true_positives / positives, true_positives / (i + 1)))
    return points[::-1]


def point_at_recall(scores: Sequence[float], labels: Sequence[bool], recall: float) -> CurvePoint:
    """The first point (lowest threshold) of the curve whose recall is <= `recall`."""
    if not 0 < recall < 1:
        raise ValueError(f"target recall must lie in (0, 1), got {recall}")
    for point in precision_recall_curve(scores, labels):
        if point.recall <= recall:
            return point
    raise ValueError(
        f"no threshold has recall <= {recall}: the top-scored positives alone already make more than that share"
    )


def cutoff_at_recall(
    scores: Sequence[float],
    labels: Sequence[bool],
    recall: float,
    test: tuple[Sequence[float], Sequence[bool]] | None = None,
) -> Cutoff:
    validation = point_at_recall(scores, labels, recall)
    if test is None:
        return Cutoff(validation.threshold, validation)
    tested = point_at_recall(*test, recall)
    return Cutoff((validation.threshold + tested.threshold) / 2, validation, tested)


def cutoffs(
    scores: Sequence[float], labels: Sequence[bool], test: tuple[Sequence[float], Sequence[bool]] | None = None
) -> dict[str, Cutoff]:
    return {name: cutoff_at_recall(scores, labels, r, test) for name, r in TARGET_RECALLS.items()}


def best_precision_at_recall(scores: Sequence[float], labels: Sequence[bool], recall: float) -> float:
    """The highest precision among thresholds whose recall is >= `recall` (what Keras' PrecisionAtRecall, the
    authors' early-stopping metric, estimates on 1,000 fixed thresholds; here exactly, on every distinct score)."""
    return max(p.precision for p in precision_recall_curve(scores, labels) if p.recall >= recall)
