"""The Critic service: Classify (stream) and Info, on the domain's CriticScorer."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from proctor.engine.errors import ItemError
from proctor.engine.items import TextPair
from proctor.engine.services import convert
from proctor.engine.services.streams import ServiceContext, StreamSpec, run_batched_stream, run_stream
from proctor.engine.skd.critic_scoring import CriticScorer
from proctor.v1 import common_pb2, critic_pb2, critic_pb2_grpc

SERVICE = "proctor.v1.Critic"


class CriticService(critic_pb2_grpc.CriticServicer):
    def __init__(self, scorer: CriticScorer, svc: ServiceContext) -> None:
        self.scorer = scorer
        self.svc = svc
        self._classify = StreamSpec("Classify", self._classify_one, critic_pb2.ClassifyResult)
        self._classify_batched = StreamSpec("ClassifyBatched", self._classify_one, critic_pb2.ClassifyResult)
        self._queue_seconds = svc.metrics.queue_seconds.labels(svc.name, "Classify")
        self._inference_seconds = svc.metrics.inference_seconds.labels(svc.name, "Classify")
        self._prompt_tokens = svc.metrics.tokens.labels(svc.name, "Classify", "prompt")

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
            scored = await self.scorer.score_triple(t.head, relation, t.tail, seed)
        elif which == "pair":
            if not req.pair.first.strip():
                raise ItemError("empty", "pair.first")
            relation = None
            scored = await self.scorer.score_pair(TextPair(req.pair.first, req.pair.second))
        else:
            raise ItemError("required: set triple or pair", "input")
        if req.HasField("cutoff"):
            cutoff = convert.check_range(req.cutoff, "cutoff", 0.0, 1.0)
        else:
            cutoff = self.scorer.cutoff(relation)
        score, queue_s, inference_s = scored.score, scored.queue_s, scored.inference_s
        self._queue_seconds.observe(queue_s)
        self._inference_seconds.observe(inference_s)
        self._prompt_tokens.inc(scored.tokens)  # every name draw's pair, as the classifier read it
        return critic_pb2.ClassifyResult(
            id=req.id,
            score=score,
            accepted=score > cutoff,
            cutoff=cutoff,
            timing=convert.timing(queue_s, inference_s, time.perf_counter() - received),
        )
