"""Symbolic Knowledge Distillation: the teacher's prompts and the filters on what it writes (PAPERS.md §1.1-1.2).

Pure Python on strings. The templates below are byte-exact copies of PAPERS.md §1.2; the seed events and worked
examples are proctor's own (engine/data/), not the authors'.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from proctor.engine.types import FinishReason, SamplingParams

DATA = Path(__file__).resolve().parent / "data"
EVENT_STOP = "\n\n"
EVENT_SHOTS = 10
INFERENCE_SHOTS = 5
TARGET_NAMES = ("Alex", "Chris")  # PersonX, PersonY in the open slot
ALLOWED_EVENT_CHARS = re.compile(r"^[A-Za-z0-9 ',\".\-’$]*$")


@dataclass(frozen=True)
class Relation:
    name: str
    prefix: str
    example: str  # placeholders {n}, {head}, {tail}

    def open_slot(self, n: int, head: str) -> str:
        """The example cut just before ` {tail}`: the teacher writes the tail from here."""
        cut = self.example.index(" {tail}")
        return self.example[:cut].format(n=n, head=head)


RELATIONS: dict[str, Relation] = {
    r.name: r
    for r in (
        Relation(
            "xWant",
            "How does this situation affect each character's wants?\n\n\n",
            "Situation {n}: {head}.\n\nWants: As a result, PersonX wants {tail}.\n\n",
        ),
        Relation(
            "xAttr",
            "Next, we will discuss how people are seen in different situations. Examples:\n\n\n",
            "{n}. When {head}, people think PersonX is {tail}.\n\n",
        ),
        Relation(
            "xIntent",
            "For each event, what do the characters want?\n\n\n",
            '{n}. \n\nEvent: {head}.\n\nIntention: "{head}" because PersonX wants {tail}.\n\n',
        ),
        Relation(
            "xEffect",
            "What is the result?\n\n\n",
            "{n}.\n\nevent: {head}\n\noutcome: PersonX {tail}\n\n",
        ),
        Relation(
            "xReact",
            "Next, how do people feel in each situation? Examples:\n\n\n",
            "Situation {n}: {head}.\n\nPersonX feels: {tail}.\n\n",
        ),
        Relation(
            "xNeed",
            "What needs to be true for this event to take place?\n\n\n",
            "Event {n}.: {head}\n\nPrerequisites: For this to happen, PersonX needed {tail}.\n\n",
        ),
        Relation(
            "HinderedBy",
            "What condition stops this event from occurring?\n\n\n",
            '{n}. Event: {head}.\n\nCondition: "{head}" is untrue because {tail}.\n\n\n',
        ),
    )
}

# The paper's sampling (PAPERS.md §1.1, §1.2); a request may override any field.
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


def names_back(text: str, x: str = TARGET_NAMES[0], y: str = TARGET_NAMES[1]) -> str:
    """Map the target's names back to the placeholders (whole words only: 'Alexandra' stays)."""
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


def inference_prompt(relation: str, head: str, rng: random.Random) -> str:
    """Prefix, 5 worked examples (each with its own random name pair), then the target with Alex / Chris."""
    rel = RELATIONS[relation]
    shots = rng.sample(list(worked_examples()[relation]), INFERENCE_SHOTS)
    parts = [rel.prefix]
    for n, (shot_head, tail) in enumerate(shots, 1):
        x, y = name_pair(rng)
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


def filter_events(samples: Sequence[Candidate], drop_fraction: float = 0.2) -> list[Candidate]:
    """The paper's event filters, in its order; returns the kept events with their stripped text."""
    kept = [
        Candidate(s.text.strip(), s.finish_reason, s.stop_reason, s.logprob_sum)
        for s in samples
        if s.finish_reason == FinishReason.STOP and s.stop_reason == EVENT_STOP and s.text.strip().startswith("PersonX")
    ]
    seen: set[str] = set()
    unique = []
    for s in kept:
        if s.text not in seen:
            seen.add(s.text)
            unique.append(s)
    drop = math.floor(len(unique) * drop_fraction)
    likely = sorted(unique, key=lambda s: s.logprob_sum, reverse=True)[: len(unique) - drop]
    order = {id(s): i for i, s in enumerate(unique)}
    likely.sort(key=lambda s: order[id(s)])  # keep the sampling order, minus the dropped
    return [s for s in likely if ALLOWED_EVENT_CHARS.match(s.text) and len(s.text) >= len("PersonX")]


def clean_tails(samples: Sequence[Candidate]) -> list[Candidate]:
    """Tail post-processing for one (head, relation): drop <= 2 chars, strip '.' and ' ', names back, dedup."""
    out: list[Candidate] = []
    seen: set[str] = set()
    for s in samples:
        tail = s.text
        if len(tail.strip()) <= 2:  # measured without the leading space every sampled tail starts with
            continue
        tail = tail.removesuffix(".").removeprefix(" ")
        tail = names_back(tail)
        if tail in seen:
            continue
        seen.add(tail)
        out.append(Candidate(tail, s.finish_reason, s.stop_reason, s.logprob_sum))
    return out
