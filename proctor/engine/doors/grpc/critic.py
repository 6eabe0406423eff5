"""The Critic over gRPC: Classify, ClassifyBatched and Info, converted to and from the Critic's core."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from proctor.engine.cores.critic import CriticCore
from proctor.engine.doors.grpc import convert
from proctor.engine.doors.grpc.streams import StreamSpec, run_batched_stream, run_stream
from proctor.engine.errors import ItemError
from proctor.v1 import common_pb2, critic_pb2, critic_pb2_grpc


class CriticService(critic_pb2_grpc.CriticServicer):
    def __init__(self, core: CriticCore) -> None:
        self.core = core
        self.svc = core.svc
        self._classify = StreamSpec("Classify", self._classify_one, critic_pb2.ClassifyResult)
        self._classify_batched = StreamSpec("ClassifyBatched", self._classify_one, critic_pb2.ClassifyResult)

    async def Classify(  # type: ignore[override]  # encoded replies (streams.py)
        self, request_iterator: AsyncIterator[critic_pb2.ClassifyRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        async for result in run_stream(self.svc, self._classify, request_iterator):
            yield result

    async def ClassifyBatched(  # type: ignore[override]  # encoded replies (streams.py)
        self, request_iterator: AsyncIterator[critic_pb2.ClassifyBatch], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        async for message in run_batched_stream(self.svc, self._classify_batched, request_iterator):
            yield message

    async def Info(
        self, request: common_pb2.InfoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> common_pb2.ModelInfo:
        return convert.model_info("Critic", self.core.scorer.backend.info, self.core.info_extra())

    async def _classify_one(self, req: critic_pb2.ClassifyRequest) -> critic_pb2.ClassifyResult:
        received = time.perf_counter()
        which = req.WhichOneof("input")
        seed = req.seed if req.HasField("seed") else None
        cutoff = req.cutoff if req.HasField("cutoff") else None
        if which == "triple":
            t = req.triple
            relation = convert.relation(t.relation, "triple.relation")
            verdict = await self.core.triple(t.head, relation, t.tail, seed, cutoff)
        elif which == "pair":
            verdict = await self.core.pair(req.pair.first, req.pair.second, cutoff)
        else:
            raise ItemError("required: set triple or pair", "input")
        result = critic_pb2.ClassifyResult(
            id=req.id, score=verdict.score, accepted=verdict.accepted, cutoff=verdict.cutoff
        )
        convert.fill_timing(result.timing, verdict.queue_s, verdict.inference_s, time.perf_counter() - received)
        return result
