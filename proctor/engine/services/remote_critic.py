"""A Critic in another proctor server, used by GenerateTriples when `teacher.critic` is an address."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from proctor.engine.errors import ItemError
from proctor.engine.services.convert import RELATION_ENUMS
from proctor.engine.skd.triples import Judgement
from proctor.v1 import critic_pb2, critic_pb2_grpc


class RemoteCritic:
    def __init__(self, target: str, timeout_s: float = 600.0) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._channel: grpc.aio.Channel | None = None

    def _stub(self) -> critic_pb2_grpc.CriticStub:
        if self._channel is None:  # created lazily, inside the server's event loop
            self._channel = grpc.aio.insecure_channel(self.target)
        return critic_pb2_grpc.CriticStub(self._channel)

    async def judge_many(self, triples: Sequence[tuple[str, str, str, int]]) -> list[Judgement]:
        """All triples of one event on one Classify stream."""
        requests = [
            critic_pb2.ClassifyRequest(
                id=str(i), triple=critic_pb2.Triple(head=h, relation=RELATION_ENUMS[r], tail=t), seed=seed
            )
            for i, (h, r, t, seed) in enumerate(triples)
        ]
        results = {}
        try:
            call: Any = self._stub().Classify(iter(requests), timeout=self.timeout_s)
            async for result in call:
                results[result.id] = result
        except grpc.aio.AioRpcError as exc:
            raise ItemError(f"the critic at {self.target} failed: {exc.code().name}: {exc.details()}",
                            code="UNAVAILABLE") from exc  # fmt: skip
        out = []
        for request in requests:
            result = results.get(request.id)
            if result is None or result.HasField("error"):
                why = result.error.message if result is not None else "no answer"
                raise ItemError(f"the critic at {self.target} could not score a triple: {why}", code="UNAVAILABLE")
            out.append(Judgement(result.score, result.cutoff))
        return out

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(grace=None)
