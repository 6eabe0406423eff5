"""Critic clients: P(valid) of generated triples or text pairs, and the cut-offs the server's critic holds them to."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from proctor.clients.streaming import AsyncClient, SyncClient, run_async, run_sync
from proctor.v1 import common_pb2, critic_pb2, critic_pb2_grpc

RELATIONS = {
    name: common_pb2.Relation.Value(name) for name in common_pb2.Relation.keys() if name != "RELATION_UNSPECIFIED"
}


def triple_request(
    id: str, head: str, relation: str, tail: str, *, seed: int | None = None, cutoff: float | None = None
) -> critic_pb2.ClassifyRequest:
    """`relation` by its proto name (X_WANT, ...); `seed` fixes the name draws; `cutoff` overrides the server's."""
    request = critic_pb2.ClassifyRequest(
        id=id, triple=critic_pb2.Triple(head=head, relation=RELATIONS[relation], tail=tail)
    )
    if seed is not None:
        request.seed = seed
    if cutoff is not None:
        request.cutoff = cutoff
    return request


def cutoff_levels(info: common_pb2.ModelInfo) -> dict[str, float]:
    """The cut-off levels (high, medium) the server's critic publishes in its Info."""
    keys = {level: f"cutoff_{level}" for level in ("high", "medium")}  # not cutoff_level, the level in force
    return {level: float(info.extra[key]) for level, key in keys.items() if key in info.extra}


class CriticClient(SyncClient):
    """Blocking Critic client (one channel; safe to share across threads)."""

    def __init__(self, target: str, **options: Any) -> None:
        """`options`: timeout_s, credentials (TLS / mTLS / bearer token), max_message_bytes."""
        super().__init__(target, **options)
        self.stub = critic_pb2_grpc.CriticStub(self.channel)

    def classify(self, requests: Iterable[critic_pb2.ClassifyRequest]) -> dict[str, critic_pb2.ClassifyResult]:
        return run_sync(self, critic_pb2.ClassifyResult, self.stub.Classify, list(requests))


class AsyncCriticClient(AsyncClient):
    """asyncio Critic client; create it inside the running loop."""

    def __init__(self, target: str, **options: Any) -> None:
        super().__init__(target, **options)
        self.stub = critic_pb2_grpc.CriticStub(self.channel)

    async def classify(self, requests: Iterable[critic_pb2.ClassifyRequest]) -> dict[str, critic_pb2.ClassifyResult]:
        return await run_async(self, critic_pb2.ClassifyResult, self.stub.Classify, list(requests))
