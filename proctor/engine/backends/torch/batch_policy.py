"""How the torch backend forms its batches. The engine thread takes one round at a time off five queues, one per
kind of item, each in arrival order:

- Score groups and probe groups: every one that waits, each run alone: its context computed once, then its
  continuations in batches of `continuation_batch_size` against copies of the context's KV cache;
- Score: the oldest item and the waiting ones nearest it in length, while the padded batch (items x longest) fits
  `max_score_tokens` (less padding; the oldest always goes, so nothing starves). Packed (varlen attention, no
  padding): oldest first while their tokens fit. Score items that also sample a token (ScoreSampleItem) wait in a
  queue of their own and form their own batch by the same rule;
- generation: a wave of prompts in arrival order while their samples (`n` each) fit `max_batch_seqs`; the first
  always goes. Prompts that arrive later join the next wave.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from proctor.engine.items import (
    GenerateItem,
    Generation,
    GroupOutput,
    ProbeGroupItem,
    ScoreGroupItem,
    ScoreItem,
    ScoreOutput,
    ScoreSample,
    ScoreSampleItem,
)

ItemT = TypeVar("ItemT", GenerateItem, ScoreItem, ScoreGroupItem, ProbeGroupItem, ScoreSampleItem)
ResultT = TypeVar("ResultT", Generation, ScoreOutput, GroupOutput, ScoreSample)


@dataclass
class Job(Generic[ItemT, ResultT]):
    """One item waiting for the engine thread, and the asyncio future its caller awaits."""

    item: ItemT
    future: asyncio.Future[ResultT]
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.perf_counter)
    cancelled: bool = False

    def resolve(self, value: ResultT) -> None:
        self.loop.call_soon_threadsafe(_set_result, self.future, value)

    def fail(self, exc: BaseException) -> None:
        self.loop.call_soon_threadsafe(_set_exception, self.future, exc)


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


GenerateJob = Job[GenerateItem, Generation]
ScoreJob = Job[ScoreItem, ScoreOutput]
ScoreGroupJob = Job[ScoreGroupItem, GroupOutput]
ProbeGroupJob = Job[ProbeGroupItem, GroupOutput]
ScoreSampleJob = Job[ScoreSampleItem, ScoreSample]
ScoredJob = TypeVar("ScoredJob", ScoreJob, ScoreSampleJob)


@dataclass
class Queues:
    """What waits for the engine thread, one queue per kind of item, each in arrival order."""

    generate: collections.deque[GenerateJob] = field(default_factory=collections.deque)
    score: collections.deque[ScoreJob] = field(default_factory=collections.deque)
    score_groups: collections.deque[ScoreGroupJob] = field(default_factory=collections.deque)
    probe_groups: collections.deque[ProbeGroupJob] = field(default_factory=collections.deque)
    score_samples: collections.deque[ScoreSampleJob] = field(default_factory=collections.deque)

    def __len__(self) -> int:
        waiting = len(self.generate) + len(self.score) + len(self.score_groups) + len(self.probe_groups)
        return waiting + len(self.score_samples)


@dataclass
class Round:
    """What the engine thread runs next: every group, one Score batch, one batch of Scores that sample a token and
    one generation wave."""

    score_groups: list[ScoreGroupJob]
    probe_groups: list[ProbeGroupJob]
    scores: list[ScoreJob]
    wave: list[GenerateJob]
    score_samples: list[ScoreSampleJob] = field(default_factory=list)

    def jobs(self) -> list[Job[Any, Any]]:
        return [*self.score_groups, *self.probe_groups, *self.scores, *self.wave, *self.score_samples]


def sequence(item: ScoreItem) -> list[int]:
    return item.context_ids + item.target_ids


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_seqs: int
    max_score_tokens: int
    packed: bool  # Score batches as one row without padding (varlen attention)

    def take(self, queues: Queues) -> Round:
        """The next round off the queues; what it leaves keeps its place. Cancelled items are dropped."""
        score_groups = [job for job in _drain(queues.score_groups) if not job.cancelled]
        probe_groups = [job for job in _drain(queues.probe_groups) if not job.cancelled]
        scores = self._score_batch(queues.score)
        score_samples = self._score_batch(queues.score_samples)
        return Round(score_groups, probe_groups, scores, self._wave(queues.generate), score_samples)

    def _score_batch(self, queue: collections.deque[ScoredJob]) -> list[ScoredJob]:
        """The queue's next Score bucket; the rest keeps its place, cancelled items are dropped."""
        candidates = [job for job in _drain(queue) if not job.cancelled]
        batch = self.score_bucket(candidates)
        chosen = {id(job) for job in batch}
        queue.extend(job for job in candidates if id(job) not in chosen)
        return batch

    def _wave(self, queue: collections.deque[GenerateJob]) -> list[GenerateJob]:
        wave: list[GenerateJob] = []
        seqs = 0
        keep: list[GenerateJob] = []
        for job in _drain(queue):
            if job.cancelled:
                continue
            n = job.item.params.n
            if wave and seqs + n > self.max_batch_seqs:
                keep.append(job)
                continue
            wave.append(job)
            seqs += n
        queue.extend(keep)
        return wave

    def score_bucket(self, candidates: list[ScoredJob]) -> list[ScoredJob]:
        """The oldest score item and the waiting ones closest to it in length, while the padded batch
        (items x longest) fits `max_score_tokens`: less padding, and the oldest item always goes (no starvation)."""
        if not candidates:
            return []
        if self.packed:  # no padding: oldest first, while the tokens fit
            batch: list[ScoredJob] = []
            tokens = 0
            for job in candidates:
                size = len(sequence(job.item))
                if batch and tokens + size > self.max_score_tokens:
                    break
                batch.append(job)
                tokens += size
            return batch
        anchor = len(sequence(candidates[0].item))
        ranked = sorted(candidates[1:], key=lambda j: abs(len(sequence(j.item)) - anchor))
        batch, longest = [candidates[0]], anchor
        for job in ranked:
            size = len(sequence(job.item))
            if (len(batch) + 1) * max(longest, size) > self.max_score_tokens:
                continue
            batch.append(job)
            longest = max(longest, size)
        return batch

    def continuation_batch_size(self, context_tokens: int, continuations: list[list[int]]) -> int:
        """Continuations per batch of a group: the context plus the longest continuation, times the batch, fits
        `max_score_tokens` (at least one)."""
        return max(1, self.max_score_tokens // (context_tokens + max(len(c) for c in continuations)))


def _drain(queue: collections.deque[Job[ItemT, ResultT]]) -> list[Job[ItemT, ResultT]]:
    taken = list(queue)
    queue.clear()
    return taken
