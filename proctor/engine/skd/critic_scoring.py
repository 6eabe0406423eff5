"""The Critic's policy (paper rules §1.3-1.4): a triple's score is the mean P(valid) over seeded name draws, kept when
it exceeds the cut-off that applies (configured per relation, configured for all, or a level read from the file
`proctor train-critic` wrote beside the model). Shared by Classify and GenerateTriples."""

from __future__ import annotations

import asyncio
import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from proctor.engine.backends.base import Classifier
from proctor.engine.errors import ItemError
from proctor.engine.items import TextPair
from proctor.engine.skd.critic_input import triple_pairs, unchanged_by_ftfy
from proctor.engine.skd.cutoffs import CUTOFFS_FILE
from proctor.engine.skd.triples import Judgement


class CriticScore(NamedTuple):
    """One Classify item's score, its queue and inference times and the tokens the classifier read for it."""

    score: float
    queue_s: float
    inference_s: float
    tokens: int


@dataclass
class CriticSettings:
    """The policy's settings (the `critic` config section holds them with the model's)."""

    cutoff_level: str = "medium"
    """high | medium, read from the model folder's proctor_cutoffs.json"""
    cutoff: float = -1.0
    """>= 0 overrides the level for every relation"""
    cutoffs: dict[str, float] = field(default_factory=dict)
    """per relation (xWant, ...), over both of the above"""
    draws: int = 5
    """name draws per triple; the score is their mean"""


class CriticScorer:
    """Triples and pairs -> P(valid) and the cut-off that applies; shared by Classify and GenerateTriples."""

    def __init__(self, backend: Classifier, config: CriticSettings, model_folder: Callable[[], Path]) -> None:
        """`model_folder` gives the classifier's model folder, where `proctor train-critic` wrote the cut-offs; it is
        called once the model is loaded."""
        self.backend = backend
        self.config = config
        self._model_folder = model_folder
        self._level_cutoffs: dict[str, float] | None = None

    def levels(self) -> dict[str, float]:
        """The "high" / "medium" cut-offs `proctor train-critic` wrote beside the model; {} if there are none."""
        if self._level_cutoffs is None:
            path = self._model_folder() / CUTOFFS_FILE
            found = json.loads(path.read_text()) if path.exists() else {}
            self._level_cutoffs = {k: float(v["threshold"]) for k, v in found.items()}
        return self._level_cutoffs

    def cutoff(self, relation: str | None) -> float:
        if relation is not None and relation in self.config.cutoffs:
            return self.config.cutoffs[relation]
        if self.config.cutoff >= 0:
            return self.config.cutoff
        levels = self.levels()
        if self.config.cutoff_level not in levels:
            raise ItemError(
                f"no cut-off configured: set critic.cutoff, or give a model folder with {CUTOFFS_FILE}",
                "cutoff",
                "FAILED_PRECONDITION",
            )
        return levels[self.config.cutoff_level]

    async def score_triple(
        self, head: str, relation: str, tail: str, seed: int | None, field: str = "triple"
    ) -> CriticScore:
        pairs = await _pairs([(head, relation, tail, seed)], self.config.draws)
        out = await self.backend.classify(pairs, field)
        return CriticScore(statistics.fmean(out.probs), out.queue_s, out.inference_s, out.tokens)

    async def judge_many(self, triples: Sequence[tuple[str, str, str, int]]) -> list[Judgement]:
        """The domain's Critic interface (GenerateTriples in the same server): every draw of every triple of an
        event in one classifier submission."""
        draws = self.config.draws
        pairs = await _pairs(triples, draws)
        probs = (await self.backend.classify(pairs, "triple")).probs
        return [
            Judgement(statistics.fmean(probs[i * draws : (i + 1) * draws]), self.cutoff(relation))
            for i, (_, relation, _, _) in enumerate(triples)
        ]

    async def score_pair(self, pair: TextPair, field: str = "pair") -> CriticScore:
        out = await self.backend.classify([pair], field)
        return CriticScore(out.probs[0], out.queue_s, out.inference_s, out.tokens)


async def _pairs(triples: Sequence[tuple[str, str, str, int | None]], draws: int) -> list[TextPair]:
    """Every triple's name draws, in order. Text that ftfy may change (anything but plain ASCII) costs ~0.1 ms a
    string to check: such triples are drawn on a worker thread, not on the event loop."""

    def build() -> list[TextPair]:
        return [p for head, relation, tail, seed in triples for p in triple_pairs(head, relation, tail, seed, draws)]

    if all(unchanged_by_ftfy(head) and unchanged_by_ftfy(tail) for head, _, tail, _ in triples):
        return build()
    return await asyncio.to_thread(build)
