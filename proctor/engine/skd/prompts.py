"""Symbolic Knowledge Distillation: the teacher's prompts and the filters on what it writes (paper rules §1.1-1.2).

Pure Python on strings. The templates below are byte-exact copies of paper rules §1.2; the seed events and worked
examples are proctor's own (engine/data/), not the authors'.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from proctor.engine.items import FinishReason, SamplingParams
from proctor.engine.skd.relations import RELATIONS

DATA = Path(__file__).resolve().parents[1] / "data"
EVENT_STOP = "\n\n"
EVENT_SHOTS = 10
INFERENCE_SHOTS = 5
TARGET_NAMES = ("Alex", "Chris")  # PersonX, PersonY in the open slot
EVENT_KEEP_FRACTION = 0.8  # of the run's distinct events, the most likely int(0.8 * N) are kept
EVENT_PUNCTUATION = "',\".-’$"  # allowed in an event beside Unicode letters and digits and the space
MAX_SHORT_TAIL = 2  # a raw tail of this many characters or fewer is dropped


@dataclass(frozen=True)
class NameChoices:
    """How names stand in for PersonX / PersonY in the inference prompts. The defaults are the authors' rule
    (paper rules §1.4); each field set true is proctor's own choice, documented as ours (paper rules §1.4, last
    paragraph)."""

    distinct_example_names: bool = False
    """ours: a worked example never gives PersonX and PersonY the same name"""
    whole_word_names_back: bool = False
    """ours: Alex/Chris map back only as whole words ("Alexander" stays)"""


AUTHORS_NAMES = NameChoices()


# The paper's sampling (paper rules §1.1, §1.2); a request may override any field.
EVENT_SAMPLING = SamplingParams(
    n=100,
    temperature=1.0,
    top_p=0.9,
    presence_penalty=0.5,
    frequency_penalty=0.5,
    max_tokens=12,
    stop=(EVENT_STOP,),
    logprobs=True,
)
INFERENCE_SAMPLING = SamplingParams(n=10, temperature=1.0, top_p=0.5, max_tokens=12, stop=(EVENT_STOP,), logprobs=True)


def derive_seed(seed: int, *parts: str) -> int:
    """A seed for one random choice of a run: the run's seed and what the choice is about (event, relation, ...)."""
    digest = hashlib.blake2b("\x00".join((str(seed), *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 2


@cache
def seed_events() -> tuple[str, ...]:
    return tuple(line.strip() for line in (DATA / "seed_events.txt").read_text().splitlines() if line.strip())


@cache
def first_names() -> tuple[str, ...]:
    return tuple(line.strip() for line in (DATA / "first_names.txt").read_text().splitlines() if line.strip())


@cache
def worked_examples() -> dict[str, tuple[tuple[str, str], ...]]:
    data = json.loads((DATA / "relation_examples.json").read_text())
    return {name: tuple((head, tail) for head, tail in data[name]) for name in RELATIONS}


def replace_names(text: str, x: str, y: str) -> str:
    return text.replace("PersonX", x).replace("PersonY", y)


def names_back(text: str, whole_words: bool = False) -> str:
    """Map the target's names back to the placeholders: the authors' plain replace ('Alexander' becomes
    'PersonXander'), or with `whole_words` (ours) only whole words ('Alexander' stays)."""
    x, y = TARGET_NAMES
    if not whole_words:
        return text.replace(x, "PersonX").replace(y, "PersonY")
    text = re.sub(rf"\b{re.escape(x)}\b", "PersonX", text)
    return re.sub(rf"\b{re.escape(y)}\b", "PersonY", text)


def event_prompt(rng: random.Random, pool: Sequence[str] | None = None) -> str:
    """10 events drawn from the pool, reshuffled per call, then the open slot `11. Event:`."""
    shots = rng.sample(list(pool or seed_events()), EVENT_SHOTS)
    return "".join(f"{n}. Event: {event}\n\n\n" for n, event in enumerate(shots, 1)) + f"{EVENT_SHOTS + 1}. Event:"


def name_pair(rng: random.Random) -> tuple[str, str]:
    """Two different names, uniformly: the very draws of rng.sample(first_names(), 2) (its method for populations
    over 21, tested), without its per-call checks, which cost the critic more than the rest of a triple."""
    names = first_names()
    i = rng.randrange(len(names))
    j = rng.randrange(len(names))
    while j == i:
        j = rng.randrange(len(names))
    return names[i], names[j]


def example_names(rng: random.Random, distinct: bool) -> tuple[str, str]:
    """A worked example's names: two independent draws from the list (the authors' rule: they may coincide), or
    with `distinct` (ours) two different names."""
    if distinct:
        return name_pair(rng)
    names = first_names()
    return names[rng.randrange(len(names))], names[rng.randrange(len(names))]


def inference_prompt(relation: str, head: str, rng: random.Random, names: NameChoices = AUTHORS_NAMES) -> str:
    """Prefix, the relation's first 5 worked examples in order (each with its own random names), then the target
    with Alex / Chris."""
    rel = RELATIONS[relation]
    shots = worked_examples()[relation][:INFERENCE_SHOTS]
    parts = [rel.prefix]
    for n, (shot_head, tail) in enumerate(shots, 1):
        x, y = example_names(rng, names.distinct_example_names)
        parts.append(replace_names(rel.example.format(n=n, head=shot_head, tail=tail), x, y))
    parts.append(replace_names(rel.open_slot(INFERENCE_SHOTS + 1, head), *TARGET_NAMES))
    return "".join(parts)


# ---- filters ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One sampled continuation: its text, how it ended, and the sum of its tokens' log-probs."""

    text: str
    finish_reason: FinishReason
    stop_reason: str
    logprob_sum: float


@dataclass(frozen=True)
class EventFilterCounts:
    """How many of a pool's samples survive each of the event filters, in their order."""

    samples: int
    stopped_as_personx: int  # finish reason stop (the stop string or end of sequence), starts with PersonX
    distinct: int
    likely: int  # after the 20 % drop
    kept: int  # after the character and length test

    def explain(self) -> str:
        return (
            f"{self.samples} samples: {self.stopped_as_personx} stopped and start with PersonX, {self.distinct} "
            f"distinct, {self.likely} after dropping the least likely 20 %, {self.kept} with only letters, digits, "
            f"spaces and {EVENT_PUNCTUATION} and at least {len('PersonX')} characters"
        )


def event_characters_ok(text: str) -> bool:
    return all(c.isalnum() or c == " " or c in EVENT_PUNCTUATION for c in text)


def filter_events(samples: Sequence[Candidate]) -> tuple[list[Candidate], EventFilterCounts]:
    """The paper's event filters over the whole pool of one run, in its order (paper rules §1.1, §1.4): stopped
    samples starting with PersonX; duplicates removed (each keeps its first position and the log-prob of its last
    occurrence); the int(0.8 N) most likely kept; then the character and length test. The kept events (stripped
    text) come in sampling order."""
    stopped = [s for s in samples if s.finish_reason == FinishReason.STOP and s.text.strip().startswith("PersonX")]
    last: dict[str, Candidate] = {}
    for s in stopped:
        text = s.text.strip()
        last[text] = Candidate(text, s.finish_reason, s.stop_reason, s.logprob_sum)
    unique = list(last.values())  # a dict keeps each key's first position and its last value
    keep = int(EVENT_KEEP_FRACTION * len(unique))
    likely = set(map(id, sorted(unique, key=lambda s: s.logprob_sum, reverse=True)[:keep]))
    survivors = [s for s in unique if id(s) in likely]
    kept = [s for s in survivors if event_characters_ok(s.text) and len(s.text) >= len("PersonX")]
    return kept, EventFilterCounts(len(samples), len(stopped), len(unique), len(survivors), len(kept))


def clean_tails(samples: Sequence[Candidate], names: NameChoices = AUTHORS_NAMES) -> list[Candidate]:
    """Tail post-processing for one (head, relation): drop raw tails of <= 2 characters (before any strip, so
    " ab" survives as "ab"), strip one trailing '.' and one leading ' ', names back, drop duplicates."""
    out: list[Candidate] = []
    seen: set[str] = set()
    for s in samples:
        if len(s.text) <= MAX_SHORT_TAIL:
            continue
        tail = names_back(s.text.removesuffix(".").removeprefix(" "), names.whole_word_names_back)
        if tail in seen:
            continue
        seen.add(tail)
        out.append(Candidate(tail, s.finish_reason, s.stop_reason, s.logprob_sum))
    return out
