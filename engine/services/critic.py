"""The Critic service: Classify (stream) and Info. A triple is scored as the mean over seeded name draws."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from proctor.engine.backends.builtin_models import resolve_model
from proctor.engine.backends.torch.classifier import TorchClassifier
from proctor.engine.config import CriticConfig
from proctor.engine.errors import ItemError
from proctor.engine.services import convert
from proctor.engine.services.streams import ServiceContext, StreamSpec, run_batched_stream, run_stream
from proctor.engine.skd.critic_input import TextPair, triple_pairs, unchanged_by_ftfy
from proctor.engine.skd.cutoffs import CUTOFFS_FILE
from proctor.engine.skd.triples import Judgement
from proctor.proto.proctor.v1 import common_pb2, critic_pb2, critic_pb2_grpc

SERVICE = "proctor.v1.Critic"


class CriticScorer:
    """Triples and pairs -> P(valid) and the cut-off that applies; shared by Classify and GenerateTriples."""

    def __init__(self, backend: TorchClassifier, config: CriticConfig) -> None:
        self.backend = backend
        self.config = config
        self._level_cutoffs: dict[str, float] | None = None

    def levels(self) -> dict[str, float]:
        """The "high" / "medium" cut-offs `proctor train-critic` wrote beside the model; {} if there are none."""
        if self._level_cutoffs is None:
            path = Path(resolve_model(self.config.model)) / CUTOFFS_FILE
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
    ) -> tuple[float, float, float]:
        pairs = await _pairs([(head, relation, tail, seed)], self.config.draws)
        probs, queue_s, inference_s = await self.backend.classify(pairs, field)
        return statistics.fmean(probs), queue_s, inference_s

    async def judge_many(self, triples: Sequence[tuple[str, str, str, int]]) -> list[Judgement]:
        """The domain's Critic interface (GenerateTriples in the same server): every draw of every triple of an
        event in one classifier submission."""
        draws = self.config.draws
        pairs = await _pairs(triples, draws)
        probs, _, _ = await self.backend.classify(pairs, "triple")
        return [
            Judgement(statistics.fmean(probs[i * draws : (i + 1) * draws]), self.cutoff(relation))
            for i, (_, relation, _, _) in enumerate(triples)
        ]

    async def score_pair(self, pair: TextPair, field: str = "pair") -> tuple[float, float, float]:
        probs, queue_s, inference_s = await self.backend.classify([pair], field)
        return probs[0], queue_s, inference_s


async def _pairs(triples: Sequence[tuple[str, str, str, int | None]], draws: int) -> list[TextPair]:
    """Every triple's name draws, in order. Text that ftfy may change (anything but plain ASCII) costs ~0.1 ms a
    string to check: such triples are drawn on a worker thread, not on the event loop."""

    def build() -> list[TextPair]:
        return [p for head, relation, tail, seed in triples for p in triple_pairs(head, relation, tail, seed, draws)]

    if all(unchanged_by_ftfy(head) and unchanged_by_ftfy(tail) for head, _, tail, _ in triples):
        return build()
    return await asyncio.to_thread(build)


class CriticService(critic_pb2_grpc.CriticServicer):
    def __init__(self, scorer: CriticScorer, svc: ServiceContext) -> None:
        self.scorer = scorer
        self.svc = svc
        self._classify = StreamSpec("Classify", self._classify_one, critic_pb2.ClassifyResult)
        self._classify_batched = StreamSpec("ClassifyBatched", self._classify_one, critic_pb2.ClassifyResult)
        self._queue_seconds = svc.metrics.queue_seconds.labels(svc.name, "Classify")
        self._inference_seconds = svc.metrics.inference_seconds.labels(svc.name, "Classify")

    async def Classify(
        self, request_iterator: AsyncIterator[critic_pb2.ClassifyRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[critic_pb2.ClassifyResult]:
        async for result in run_stream(self.svc, self._classify, request_iterator):
            yield result

    async def ClassifyBatched(
        self, request_iterator: AsyncIterator[critic_pb2.ClassifyBatch], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[critic_pb2.ClassifyResults]:
        results = critic_pb2.ClassifyResults
        async for message in run_batched_stream(self.svc, self._classify_batched, request_iterator, results):
            yield message

    async def Info(
        self, request: common_pb2.InfoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> common_pb2.ModelInfo:
        return convert.model_info("Critic", self.scorer.backend.info, self._extra())

    def _extra(self) -> dict[str, str]:
        config = self.scorer.config
        extra = {"draws": str(config.draws), "cutoff_level": config.cutoff_level}
        extra.update({f"cutoff_{level}": repr(value) for level, value in self.scorer.levels().items()})
        if config.cutoff >= 0:
            extra["cutoff"] = repr(config.cutoff)
        return extra

    async def _classify_one(self, req: critic_pb2.ClassifyRequest) -> critic_pb2.ClassifyResult:
        received = time.perf_counter()
        which = req.WhichOneof("input")
        seed = req.seed if req.HasField("seed") else None
        if which == "triple":
            t = req.triple
            relation = convert.relation(t.relation, "triple.relation")
            for name in ("head", "tail"):
                if not getattr(t, name).strip():
                    raise ItemError("empty", f"triple.{name}")
            score, queue_s, inference_s = await self.scorer.score_triple(t.head, relation, t.tail, seed)
        elif which == "pair":
            if not req.pair.first.strip():
                raise ItemError("empty", "pair.first")
            relation = None
            score, queue_s, inference_s = await self.scorer.score_pair(TextPair(req.pair.first, req.pair.second))
        else:
            raise ItemError("required: set triple or pair", "input")
        if req.HasField("cutoff"):
            cutoff = convert.check_range(req.cutoff, "cutoff", 0.0, 1.0)
        else:
            cutoff = self.scorer.cutoff(relation)
        self._queue_seconds.observe(queue_s)
        self._inference_seconds.observe(inference_s)
        return critic_pb2.ClassifyResult(
            id=req.id,
            score=score,
            accepted=score > cutoff,
            cutoff=cutoff,
            timing=convert.timing(queue_s, inference_s, time.perf_counter() - received),
        )
