"""The outcome reward R_f1 (paper rules §2.2): token-set F1 of the first answer against the best gold."""

from __future__ import annotations

import re
import string

ANSWER_SPLIT = "<|answer_split|>"
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")  # ASCII only: “ ” — … stay


def tokens(text: str) -> set[str]:
    """The token set of the normalised text: ASCII punctuation -> space, then split on whitespace (which is what
    collapsing whitespace runs, stripping and splitting on one space give)."""
    return set(_PUNCTUATION.sub(" ", text).split())


def f1(prediction: str, gold: str) -> float:
    return _f1(tokens(prediction), tokens(gold))


def _f1(pred: set[str], ref: set[str]) -> float:
    common = len(pred & ref)
    if not pred or not ref or not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def split_golds(golds: list[str]) -> list[str]:
    """Golds may come as a list, each possibly joining several with <|answer_split|>; lowercased like the answer."""
    return [g for joined in golds for g in joined.lower().split(ANSWER_SPLIT)]


def best_f1(answer: str, golds: list[str]) -> float:
    pred = tokens(answer)
    return max((_f1(pred, tokens(gold)) for gold in split_golds(golds)), default=0.0)
