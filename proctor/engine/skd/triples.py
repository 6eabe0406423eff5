"""The SKD pipeline on a teacher (`Completer`: any Generator is one): events -> seven inference prompts per event ->
tails -> critic verdicts.

Every random choice derives from (seed, event, relation), so an event gives the same triples wherever and whenever
it is processed: a resumed corpus job equals an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from proctor.engine.errors import ItemError
from proctor.engine.items import BackendInfo, GenerateItem, Generation, SamplingParams
from proctor.engine.skd import prompts as skd
from proctor.engine.skd.event_pool import EventPool


@dataclass(frozen=True)
class Judgement:
    score: float  # P(valid)
    cutoff: float  # the cut-off that applies to this triple


class Completer(Protocol):
    """What the pipeline asks of the teacher: its context length, its tokenizer, and samples of prompts that share a
    batch (a Generator's, or a core's that records them)."""

    @property
    def info(self) -> BackendInfo: ...

    def tokenize(self, text: str, add_special_tokens: bool) -> list[int]: ...

    async def generate_many(self, items: list[GenerateItem]) -> list[Generation]: ...


class Critic(Protocol):
    async def judge_many(self, triples: Sequence[tuple[str, str, str, int]]) -> list[Judgement]:
        """(head, relation, tail, seed) each -> its judgement, in order."""
        ...


@dataclass(frozen=True)
class Triple:
    head: str
    relation: str
    tail: str
    teacher_logprob: float
    critic_score: float | None = None
    accepted: bool = True  # without a critic every triple passes


async def _complete(generator: Completer, prompts: Sequence[tuple[str, SamplingParams]]) -> list[list[skd.Candidate]]:
    """Sample every prompt, all in one backend batch."""
    items = []
    limit = generator.info.max_model_len
    for prompt, params in prompts:
        ids = generator.tokenize(prompt, True)
        if len(ids) + params.max_tokens > limit:
            raise ItemError(f"an SKD prompt of {len(ids)} tokens does not fit the teacher's context {limit}", "events")
        items.append(GenerateItem(prompt_ids=ids, params=params))
    generations = await generator.generate_many(items)
    return [
        [skd.Candidate(s.text, s.finish_reason, s.stop_reason, float(sum(s.logprobs or ()))) for s in g.samples]
        for g in generations
    ]


async def generate_events(generator: Completer, count: int, seed: int, params: SamplingParams) -> EventPool:
    """Events written by the teacher from the seed pool, the paper's filters over the run's whole pool; the pool
    says which events it kept and, when fewer than `count`, exactly why."""
    pool = EventPool(count, seed, params)
    while prompts := pool.next_round():
        pool.add(await _complete(generator, prompts))
    return pool


async def infer(
    generator: Completer,
    head: str,
    relations: Sequence[str],
    seed: int,
    params: SamplingParams,
    names: skd.NameChoices = skd.AUTHORS_NAMES,
) -> dict[str, list[skd.Candidate]]:
    """The seven (or fewer) relation prompts of one event, sent to the backend together; cleaned tails each."""

    prompts = []
    for relation in relations:
        rng = random.Random(skd.derive_seed(seed, head, relation))
        prompt = skd.inference_prompt(relation, head, rng, names)
        prompts.append((prompt, dataclasses.replace(params, seed=rng.randrange(2**62))))
    samples = await _complete(generator, prompts)
    return {relation: skd.clean_tails(s, names) for relation, s in zip(relations, samples, strict=True)}


async def triples_for_event(
    generator: Completer,
    head: str,
    relations: Sequence[str],
    seed: int,
    params: SamplingParams,
    critic: Critic | None,
    cutoff: float | None,
    names: skd.NameChoices = skd.AUTHORS_NAMES,
) -> list[Triple]:
    """One event's triples in a fixed order (relations as given, tails as sampled), each judged by the critic."""
    tails = await infer(generator, head, relations, seed, params, names)
    found = [(relation, c) for relation in relations for c in tails[relation]]
    if critic is None:
        return [Triple(head, relation, c.text, c.logprob_sum) for relation, c in found]
    verdicts = await critic.judge_many(
        [(head, relation, c.text, skd.derive_seed(seed, head, relation, c.text)) for relation, c in found]
    )
    return [
        Triple(head, relation, c.text, c.logprob_sum, v.score, v.score > (cutoff if cutoff is not None else v.cutoff))
        for (relation, c), v in zip(found, verdicts, strict=True)
    ]
