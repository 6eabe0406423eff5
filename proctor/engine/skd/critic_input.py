"""The critic's view of a triple (paper rules §1.3-1.4): a sentence pair with two different names drawn for PersonX /
PersonY, the text then passed through `ftfy.fix_text` (default settings), as the authors' critic reads it."""

from __future__ import annotations

import random
import zlib

import ftfy

from proctor.engine.items import TextPair
from proctor.engine.skd.prompts import name_pair, replace_names
from proctor.engine.skd.relations import RELATIONS

DRAWS = 5  # score = mean over 5 draws of random names
# The authors fix the pair as one string, its halves joined by this marker, so that ftfy judges the whole text.
_JOIN = "**SEP**"

RELATION_PHRASES = {r.name: r.critic_phrase for r in RELATIONS.values()}  # a view of the relations table


def triple_pairs(head: str, relation: str, tail: str, seed: int | None = None, draws: int = DRAWS) -> list[TextPair]:
    """`draws` sentence pairs, each with its own two different first names. Without a seed the draws derive
    from the triple itself, so the same triple scores the same on every replica."""
    if seed is None:
        seed = zlib.crc32(f"{head}\x00{relation}\x00{tail}".encode())
    rng = random.Random(seed)
    second = f"{RELATION_PHRASES[relation]} {tail}"
    pairs = []
    for _ in range(draws):
        x, y = name_pair(rng)
        pairs.append(fixed_pair(replace_names(head, x, y), replace_names(second, x, y)))
    return pairs


def unchanged_by_ftfy(text: str) -> bool:
    """Printable ASCII without `&`: text ftfy's defaults never change (their only change to printable ASCII is
    unescaping HTML entities; tested on random text). The names and relation phrases are such text, so a triple
    whose head and tail are needs no ftfy call at all."""
    return text.isascii() and text.isprintable() and "&" not in text


def fix_text(text: str) -> str:
    """ftfy.fix_text with its default settings, sparing its checks (~50-150 µs a string, five strings a triple)
    where they cannot change anything."""
    return text if unchanged_by_ftfy(text) else ftfy.fix_text(text)


def fixed_pair(first: str, second: str) -> TextPair:
    """fix_text on the two halves joined as the authors join them. A half that itself holds the marker (the
    authors' split would then make three parts) is fixed on its own."""
    halves = fix_text(f"{first}{_JOIN}{second}").split(_JOIN)
    if len(halves) != 2:
        return TextPair(fix_text(first), fix_text(second))
    return TextPair(halves[0], halves[1])
