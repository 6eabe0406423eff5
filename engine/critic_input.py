"""The critic's view of a triple (PAPERS.md §1.3): a sentence pair with names drawn for PersonX / PersonY."""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

from proctor.engine.skd import name_pair, replace_names

DRAWS = 5  # score = mean over 5 draws of random names

RELATION_PHRASES = {
    "HinderedBy": "can be hindered by",
    "xNeed": "but before, PersonX needed",
    "xWant": "as a result, PersonX wants",
    "xIntent": "because PersonX wanted",
    "xReact": "as a result, PersonX feels",
    "xAttr": "so, PersonX is seen as",
    "xEffect": "as a result, PersonX",
}


@dataclass(frozen=True)
class TextPair:
    first: str
    second: str


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
        pairs.append(TextPair(replace_names(head, x, y), replace_names(second, x, y)))
    return pairs
