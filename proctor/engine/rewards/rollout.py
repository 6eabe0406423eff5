"""Atom-Searcher rollouts as text: the format check, the answer, and the atomic thoughts (paper rules §2.1-2.2).

One scan finds every format tag; the format check, the answer and the think blocks are all read off that list,
and atoms are matched only inside the think blocks. DeepResearcher lowercases the rollout before looking for tags;
matching the tag names caselessly on the original text finds exactly the same tags (the Kelvin sign is the one
non-ASCII character that lowercases to a letter of theirs; U+0130 lowercases to two characters and cannot form a
tag) and keeps offsets and atom texts in the original.

The scans run in slices of SLICE_CHARS characters: one call into the regex engine holds the GIL, so one scan over
a whole rollout would stall every other thread (the event loop's too) for as long as the rollout is long.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NamedTuple

FORMAT_TAGS = ("tool_call", "think", "answer")
_THINK = FORMAT_TAGS.index("think")
_ANSWER = FORMAT_TAGS.index("answer")


def _caseless(word: str) -> str:
    return "".join(f"[{c}{c.upper()}{chr(0x212A) if c == 'k' else ''}]" if c.isalpha() else c for c in word)


# Exactly one group matches, and its number says which tag it is: 1.. the opening tags of FORMAT_TAGS in order,
# then the closing ones.
_TAG = re.compile(
    "<(?:" + "|".join([f"({_caseless(t)})" for t in FORMAT_TAGS] + [f"/({_caseless(t)})" for t in FORMAT_TAGS]) + ")>"
)
_CLOSING = len(FORMAT_TAGS)
# What a format tag cut at a slice's end can begin with (the longest tag is `</tool_call>`, 12 characters).
_TAG_HEAD = re.compile(f"</?[a-zA-Z_\u212a]{{0,{max(map(len, FORMAT_TAGS))}}}")
# An atom is a well-formed upper-case tag pair; the set of names is open: what `<([A-Z][A-Z0-9_]*)>(.*?)</\1>`
# (across newlines) finds scanning left to right. That pattern is quadratic on unclosed tags (`<A>` * n: every
# opening tag scans to the end for its close), so the tags are found once and paired in one pass instead.
_ATOM_TAG = re.compile(r"<(/?)([A-Z][A-Z0-9_]*)>")
_ATOM_HEAD = re.compile(r"</?(?:[A-Z][A-Z0-9_]*)?")
# About 1.6 ms of the slowest scan (`<` after `<`, each one a failed tag: ~100 ns a character) per call.
SLICE_CHARS = 16 * 1024


class Atom(NamedTuple):
    type: str
    text: str
    turn: int  # index of the think block it came from


class FormatVerdict(NamedTuple):
    ok: bool
    reason: str  # why it is malformed; empty when ok
    answer: str  # the first <answer> block, lowercased and stripped (empty when malformed)


class ParsedRollout(NamedTuple):
    verdict: FormatVerdict
    atoms: list[Atom]


def parse(response: str) -> ParsedRollout:
    """The format verdict (DeepResearcher's rule, in its order) and every atom, from one scan of the tags."""
    counts = [[0, 0] for _ in FORMAT_TAGS]  # opening, closing
    # Scanning left to right, an opening tag pairs with the first closing tag after it, and the next pair starts
    # after that close: the rule's scan. An opening left without a close is where the rule fails.
    unclosed: list[tuple[int, int] | None] = [None] * len(FORMAT_TAGS)  # the pending opening tag's span
    pairs: list[list[tuple[int, int]]] = [[] for _ in FORMAT_TAGS]  # the content span of each pair
    for m in _sliced(_TAG, _TAG_HEAD, response, 0, len(response)):
        tag = m.lastindex - 1  # type: ignore[operator]  # a match always has one group
        if tag < _CLOSING:
            counts[tag][0] += 1
            if unclosed[tag] is None:
                unclosed[tag] = m.span()
        else:
            tag -= _CLOSING
            counts[tag][1] += 1
            opening = unclosed[tag]
            if opening is not None:
                pairs[tag].append((opening[1], m.start()))
                unclosed[tag] = None
    atoms = [atom for turn, (start, end) in enumerate(pairs[_THINK]) for atom in _atoms_in(response, start, end, turn)]
    return ParsedRollout(_verdict(response, counts, unclosed, pairs[_ANSWER]), atoms)


def _sliced(tag: re.Pattern[str], head: re.Pattern[str], text: str, start: int, end: int) -> Iterator[re.Match[str]]:
    """`tag.finditer(text, start, end)` in slices of about SLICE_CHARS. A tag holds one `<`, its first character, so
    a tag cut by a slice's end begins at the slice's last `<`, and the next slice starts there when what follows it
    is a tag's beginning (`head`); a tag longer than a slice (an atom name may be) widens the slice until it fits."""
    pos, size = start, SLICE_CHARS
    while pos < end:
        stop = min(end, pos + size)
        resume = pos
        for m in tag.finditer(text, pos, stop):
            yield m
            resume = m.end()
        if stop == end:
            return
        cut = text.rfind("<", resume, stop)
        if cut < 0 or not head.fullmatch(text, cut, stop):
            pos, size = stop, SLICE_CHARS
        elif cut > pos:
            pos, size = cut, SLICE_CHARS
        else:  # one tag's beginning fills the slice: no match was cut off yet, so nothing is found twice
            size *= 2


def _atoms_in(response: str, start: int, end: int, turn: int) -> list[Atom]:
    """The atoms of one think block, in linear time: an opening tag pairs with the first closing tag of its name
    after it, and the scan goes on after that close (an opening tag inside a taken pair starts nothing)."""
    # Plain ints and strings in flat lists: no tuple per tag for the garbage collector to walk (gen-2 passes over
    # hundreds of thousands of them stall every thread, the event loop's included).
    opened: list[int] = []
    content: list[int] = []
    names: list[str] = []
    closings: dict[str, list[int]] = {}  # name -> the starts of its closing tags, in order
    for m in _sliced(_ATOM_TAG, _ATOM_HEAD, response, start, end):
        if m.group(1):
            closings.setdefault(m.group(2), []).append(m.start())
        else:
            opened.append(m.start())
            content.append(m.end())
            names.append(m.group(2))
    found: list[Atom] = []
    taken_until = start
    seen: dict[str, int] = {}  # name -> how many of its closings lie before every opening still to pair
    for at, begins, name in zip(opened, content, names, strict=True):
        closes = closings.get(name)
        if at < taken_until or closes is None:
            continue
        i = seen.get(name, 0)
        while i < len(closes) and closes[i] < begins:  # openings come in order, so each closing is passed once
            i += 1
        seen[name] = i
        if i < len(closes):
            found.append(Atom(name, response[begins : closes[i]].strip(), turn))
            taken_until = closes[i] + len(name) + 3  # past `</NAME>`
    return found


def _verdict(
    response: str,
    counts: list[list[int]],
    unclosed: list[tuple[int, int] | None],
    answers: list[tuple[int, int]],
) -> FormatVerdict:
    for tag, (opened, closed), left_open in zip(FORMAT_TAGS, counts, unclosed, strict=True):
        if opened != closed:
            return FormatVerdict(False, f"unbalanced <{tag}>: {opened} open, {closed} close", "")
        if left_open is not None:
            return FormatVerdict(False, f"<{tag}> at offset {left_open[0]} has no </{tag}> after it", "")
    if not answers:
        return FormatVerdict(False, "no <answer>...</answer> block", "")
    start, end = answers[0]
    return FormatVerdict(True, "", response[start:end].lower().strip())


def check_format(response: str) -> FormatVerdict:
    return parse(response).verdict


def atoms(response: str) -> list[Atom]:
    """Every upper-case tag pair inside a think block, in order, with the index of its think block."""
    return parse(response).atoms
