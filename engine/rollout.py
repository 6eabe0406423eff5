"""Atom-Searcher rollouts as text: the format check, the answer, and the atomic thoughts (PAPERS.md §2.1-2.2)."""

from __future__ import annotations

import re
from dataclasses import dataclass

FORMAT_TAGS = ("tool_call", "think", "answer")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
# `<think>(.*?)</think>` and `<([A-Z][A-Z0-9_]*)>(.*?)</\1>`, unrolled: runs of non-`<` characters are taken at
# once instead of trying the closing tag at every character (the same matches, ~4x faster on long rollouts).
_THINK = re.compile(r"<think>([^<]*(?:<(?!/think>)[^<]*)*)</think>", re.IGNORECASE)
# An atom is a well-formed upper-case tag pair; the set of names is open.
_ATOM = re.compile(r"<([A-Z][A-Z0-9_]*)>([^<]*(?:<(?!/\1>)[^<]*)*)</\1>")


@dataclass(frozen=True)
class Atom:
    type: str
    text: str
    turn: int  # index of the think block it came from


@dataclass(frozen=True)
class FormatVerdict:
    ok: bool
    reason: str  # why it is malformed; empty when ok
    answer: str  # the first <answer> block, lowercased and stripped (empty when malformed)


def check_format(response: str) -> FormatVerdict:
    """DeepResearcher's rule, in its order: lowercase, balanced tags, then the first answer block."""
    text = response.lower()
    for tag in FORMAT_TAGS:
        opening, closing = f"<{tag}>", f"</{tag}>"
        if text.count(opening) != text.count(closing):
            return FormatVerdict(
                False, f"unbalanced <{tag}>: {text.count(opening)} open, {text.count(closing)} close", ""
            )
        pos = 0
        while (start := text.find(opening, pos)) != -1:
            end = text.find(closing, start + len(opening))
            if end == -1:
                return FormatVerdict(False, f"<{tag}> at offset {start} has no </{tag}> after it", "")
            pos = end + len(closing)
    found = _ANSWER.search(text)
    if found is None:
        return FormatVerdict(False, "no <answer>...</answer> block", "")
    return FormatVerdict(True, "", found.group(1).strip())


def think_blocks(response: str) -> list[str]:
    return [m.group(1) for m in _THINK.finditer(response)]


def atoms(response: str) -> list[Atom]:
    """Every upper-case tag pair inside a think block, in order, with the index of its think block."""
    return [
        Atom(type=m.group(1), text=m.group(2).strip(), turn=turn)
        for turn, block in enumerate(think_blocks(response))
        for m in _ATOM.finditer(block)
    ]
