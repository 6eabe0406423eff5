"""The Critic's core: a triple or a text pair checked, scored by the domain's CriticScorer, judged against the
cut-off that applies, and recorded — for every door (gRPC's Classify and ClassifyBatched, an HTTP route)."""

from __future__ import annotations

from dataclasses import dataclass

from proctor.engine.cores import checks
from proctor.engine.cores.context import ServiceContext
from proctor.engine.errors import ItemError
from proctor.engine.items import TextPair
from proctor.engine.skd.critic_scoring import CriticScore, CriticScorer


@dataclass(frozen=True)
class Verdict:
    """One item's score, whether it passes, the cut-off it was held to, and where its time went."""

    score: float
    accepted: bool
    cutoff: float
    queue_s: float
    inference_s: float
    tokens: int  # the pairs the classifier read for it (every name draw's)


class CriticCore:
    def __init__(self, scorer: CriticScorer, svc: ServiceContext) -> None:
        self.scorer = scorer
        self.svc = svc
        self._queue_seconds = svc.metrics.queue_seconds.labels(svc.name, "Classify")
        self._inference_seconds = svc.metrics.inference_seconds.labels(svc.name, "Classify")
        self._prompt_tokens = svc.metrics.tokens.labels(svc.name, "Classify", "prompt")

    def info_extra(self) -> dict[str, str]:
        """The cut-offs in force, for an Info answer."""
        config = self.scorer.config
        extra = {"draws": str(config.draws), "cutoff_level": config.cutoff_level}
        extra.update({f"cutoff_{level}": repr(value) for level, value in self.scorer.levels().items()})
        if config.cutoff >= 0:
            extra["cutoff"] = repr(config.cutoff)
        return extra

    async def triple(
        self, head: str, relation: str, tail: str, seed: int | None, cutoff: float | None, at: str = "triple"
    ) -> Verdict:
        """A (head, relation, tail) triple, read by the critic with seeded name draws; `at` prefixes field names."""
        for name, text in (("head", head), ("tail", tail)):
            if not text.strip():
                raise ItemError("empty", f"{at}.{name}")
        held = self._cutoff(cutoff, relation)
        return self._verdict(await self.scorer.score_triple(head, relation, tail, seed), held)

    async def pair(self, first: str, second: str, cutoff: float | None, at: str = "pair") -> Verdict:
        """A text pair as it is (no name draws); the cut-off is the one for every relation unless given."""
        if not first.strip():
            raise ItemError("empty", f"{at}.first")
        held = self._cutoff(cutoff, None)
        return self._verdict(await self.scorer.score_pair(TextPair(first, second), at), held)

    def _cutoff(self, cutoff: float | None, relation: str | None) -> float:
        if cutoff is not None:
            return checks.check_range(cutoff, "cutoff", 0.0, 1.0)
        return self.scorer.cutoff(relation)

    def _verdict(self, scored: CriticScore, cutoff: float) -> Verdict:
        self._queue_seconds.observe(scored.queue_s)
        self._inference_seconds.observe(scored.inference_s)
        self._prompt_tokens.inc(scored.tokens)  # every name draw's pair, as the classifier read it
        return Verdict(scored.score, scored.score > cutoff, cutoff, scored.queue_s, scored.inference_s, scored.tokens)
