"""Exactly one result per id over several server replicas, whatever happens to any one of them.

    client = ReplicaClient(["10.0.0.1:50051", "10.0.0.2:50051"], REWARD)
    results = await client.run(requests)          # dict id -> RewardResult, one per id

Each round splits the unanswered items round-robin over the replicas whose `grpc.health.v1` says SERVING and sends
each share on one stream. An item comes back for another round when its answer is retryable (UNAVAILABLE,
RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, ABORTED), when its stream broke before answering it, or when its stream ran
past `item_timeout_s` (the stream is then cancelled, so no late answer can arrive). Rounds back off exponentially
with jitter. An item gets a final error only when its attempts or the retry budget are spent. Any answer after an
id's first final answer is dropped and counted in `stats.duplicates_dropped`.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as Counter_

from proctor.clients.streaming import PLAINTEXT, Credentials, MiB
from proctor.proto.proctor.v1 import common_pb2, reward_pb2, reward_pb2_grpc, teacher_pb2, teacher_pb2_grpc

R = TypeVar("R", bound=Message)

RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE.value[0],
    grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
    grpc.StatusCode.DEADLINE_EXCEEDED.value[0],
    grpc.StatusCode.ABORTED.value[0],
}


@dataclass(frozen=True)
class Method(Generic[R]):
    """A streaming RPC the replica client can drive: its service (for health), stub and result type."""

    service: str
    stub: Callable[[grpc.aio.Channel], Any]
    rpc: str
    result_type: type[R]


REWARD = Method("proctor.v1.RewardModel", reward_pb2_grpc.RewardModelStub, "Reward", reward_pb2.RewardResult)
SCORE = Method("proctor.v1.Teacher", teacher_pb2_grpc.TeacherStub, "Score", teacher_pb2.ScoreResult)
GENERATE = Method("proctor.v1.Teacher", teacher_pb2_grpc.TeacherStub, "Generate", teacher_pb2.GenerateResult)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6  # per item
    budget_fraction: float = 1.0  # retries across the call: at most this fraction of the items (and >= 100)
    backoff_s: float = 0.05
    backoff_max_s: float = 2.0
    item_timeout_s: float = 120.0  # a stream that runs longer is abandoned and its unanswered items resent


class ClientMetrics:
    """Client-side Prometheus metrics, for the trainer's own Prometheus (pass its registry)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.items = Counter_(
            "proctor_client_items", "Items answered to the caller, by outcome (ok / error).", ["rpc", "outcome"],
            registry=registry,
        )  # fmt: skip
        self.resent = Counter_(
            "proctor_client_resent_items", "Items sent again to a replica.", ["rpc"], registry=registry
        )
        self.duplicates = Counter_(
            "proctor_client_duplicates_dropped", "Late answers for ids already answered, dropped.", ["rpc"],
            registry=registry,
        )  # fmt: skip
        self.replica_failures = Counter_(
            "proctor_client_replica_failures", "Streams that broke or timed out, by replica.", ["rpc", "target"],
            registry=registry,
        )  # fmt: skip


@dataclass
class Stats:
    rounds: int = 0
    resent: int = 0
    duplicates_dropped: int = 0
    replica_failures: Counter[str] = field(default_factory=Counter)


def expand(targets: Sequence[str]) -> list[str]:
    """A `dns:host:port` entry becomes one target per address it resolves to (re-resolved every round)."""
    out: list[str] = []
    for target in targets:
        if not target.startswith("dns:"):
            out.append(target)
            continue
        host, port = target[4:].rsplit(":", 1)
        addresses = {info[4][0] for info in socket.getaddrinfo(host, int(port), proto=socket.IPPROTO_TCP)}
        out.extend(f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in sorted(str(a) for a in addresses))
    return out


class ReplicaClient(Generic[R]):
    def __init__(
        self,
        targets: Sequence[str],
        method: Method[R],
        policy: RetryPolicy = RetryPolicy(),
        credentials: Credentials = PLAINTEXT,
        max_message_bytes: int = 64 * MiB,
        seed: int | None = None,
        metrics: ClientMetrics | None = None,
    ) -> None:
        if not targets:
            raise ValueError("at least one target")
        self.targets = list(targets)
        self.method = method
        self.policy = policy
        self.stats = Stats()
        self.metrics = metrics
        self._credentials = credentials
        self._max_message_bytes = max_message_bytes
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._rng = random.Random(seed)
        self._next = 0

    def _channel(self, target: str) -> grpc.aio.Channel:
        if target not in self._channels:
            self._channels[target] = self._credentials.aio_channel(target, self._max_message_bytes)
        return self._channels[target]

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(grace=None)
        self._channels.clear()

    async def _serving(self) -> list[str]:
        targets = expand(self.targets)

        async def check(target: str) -> bool:
            try:
                reply = await health_pb2_grpc.HealthStub(self._channel(target)).Check(
                    health_pb2.HealthCheckRequest(service=self.method.service), timeout=1.0
                )
                return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
            except grpc.aio.AioRpcError:
                return False

        verdicts = await asyncio.gather(*(check(t) for t in targets))
        return [t for t, ok in zip(targets, verdicts, strict=True) if ok]

    async def run(self, requests: Iterable[Any]) -> dict[str, R]:
        pending = {r.id: r for r in requests}
        order = list(pending)
        results: dict[str, R] = {}
        attempts: Counter[str] = Counter()
        last_error: dict[str, str] = {}
        budget = max(100, int(len(pending) * self.policy.budget_fraction))
        while pending:
            self.stats.rounds += 1
            replicas = await self._serving()
            if replicas:
                shares = self._split(list(pending), replicas)
                outcomes = await asyncio.gather(
                    *(self._stream(target, [pending[i] for i in ids]) for target, ids in shares.items())
                )
                for answers, failure in outcomes:
                    for answer in answers:
                        item_id = getattr(answer, "id")  # noqa: B009
                        if item_id in results or item_id not in pending:
                            self.stats.duplicates_dropped += 1
                            if self.metrics is not None:
                                self.metrics.duplicates.labels(self.method.rpc).inc()
                            continue
                        error = getattr(answer, "error") if answer.HasField("error") else None  # noqa: B009
                        if error is not None and error.code in RETRYABLE:
                            last_error[item_id] = f"{error.code}: {error.message}"
                            continue
                        results[item_id] = answer
                        del pending[item_id]
                    if failure:
                        for item_id in pending:
                            last_error.setdefault(item_id, failure)
            else:
                for item_id in pending:
                    last_error[item_id] = "no replica reports SERVING"
            for item_id in list(pending):
                attempts[item_id] += 1
                if attempts[item_id] >= self.policy.max_attempts or budget <= 0:
                    why = "attempts" if attempts[item_id] >= self.policy.max_attempts else "the call's retry budget"
                    results[item_id] = self.method.result_type(
                        id=item_id,
                        error=common_pb2.Status(
                            code=grpc.StatusCode.UNAVAILABLE.value[0],
                            message=f"gave up after {attempts[item_id]} tries ({why} spent); last: "
                            f"{last_error.get(item_id, 'no answer')}",
                        ),
                    )
                    del pending[item_id]
            if pending:
                budget -= len(pending)
                self.stats.resent += len(pending)
                if self.metrics is not None:
                    self.metrics.resent.labels(self.method.rpc).inc(len(pending))
                delay = min(self.policy.backoff_max_s, self.policy.backoff_s * 2 ** (self.stats.rounds - 1))
                await asyncio.sleep(delay * (0.5 + self._rng.random()))
        if self.metrics is not None:
            m, rpc = self.metrics, self.method.rpc
            errors = sum(1 for r in results.values() if r.HasField("error"))
            m.items.labels(rpc, "ok").inc(len(results) - errors)
            m.items.labels(rpc, "error").inc(errors)
        return {item_id: results[item_id] for item_id in order}

    def _failed(self, target: str) -> None:
        self.stats.replica_failures[target] += 1
        if self.metrics is not None:
            self.metrics.replica_failures.labels(self.method.rpc, target).inc()

    def _split(self, ids: list[str], replicas: list[str]) -> dict[str, list[str]]:
        shares: dict[str, list[str]] = {t: [] for t in replicas}
        for item_id in ids:
            shares[replicas[self._next % len(replicas)]].append(item_id)
            self._next += 1
        return {t: s for t, s in shares.items() if s}

    async def _stream(self, target: str, requests: list[Any]) -> tuple[list[R], str]:
        """The answers one replica gave, and why its stream ended early ("" if it did not)."""
        answers: list[R] = []
        stub = self.method.stub(self._channel(target))
        call = getattr(stub, self.method.rpc)(iter(requests), metadata=self._credentials.metadata())
        try:
            async with asyncio.timeout(self.policy.item_timeout_s):
                async for answer in call:
                    answers.append(answer)
            return answers, ""
        except TimeoutError:
            call.cancel()
            self._failed(target)
            return answers, f"{target} did not answer within {self.policy.item_timeout_s}s"
        except grpc.aio.AioRpcError as exc:
            self._failed(target)
            return answers, f"{target}: {exc.code().name}: {exc.details()}"
