"""The outcome reward R_f1 (paper rules §2.2): token-set F1 of the first answer against the best gold."""

from __future__ import annotations

import re
import string

ANSWER_SPLIT = "<|answer_split|>"
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")  # ASCII only: “ ” — … stay
# Where a text may be cut without cutting a token: whitespace (`\s` is str.split's whitespace) or punctuation.
_BOUNDARY = re.compile(rf"[\s{re.escape(string.punctuation)}]")
SLICE_CHARS = 64 * 1024  # one substitution and split per slice: no call over a whole long text holds the GIL


def tokens(text: str) -> set[str]:
    """The token set of the normalised text: ASCII punctuation -> space, then split on whitespace (which is what
    collapsing whitespace runs, stripping and splitting on one space give), a slice at a time."""
    found: set[str] = set()
    pos = 0
    while pos < len(text):
        cut = _BOUNDARY.search(text, min(pos + SLICE_CHARS, len(text)))
        stop = cut.end() if cut else len(text)
        found.update(_PUNCTUATION.sub(" ", text[pos:stop]).split())
        pos = stop
    return found


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
