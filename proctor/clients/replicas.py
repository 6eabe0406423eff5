"""Exactly one result per id over several server replicas, whatever happens to any one of them.

    client = ReplicaClient(["10.0.0.1:50051", "10.0.0.2:50051"], REWARD)
    results = await client.run(requests)          # dict id -> RewardResult, one per id

Each round splits the unanswered items round-robin over the replicas whose `grpc.health.v1` says SERVING and sends
each share on one stream, at most `window` items sent and not yet answered at a time. An item comes back for another
round when its answer is retryable (UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, ABORTED), when its stream
broke before answering it, or when its stream ran past `item_timeout_s` (the stream is then cancelled, so no late
answer can arrive). Rounds back off exponentially with jitter. The retry budget is per item: an item is tried at
most `max_attempts` times within the call's `deadline_s`, and only a try that actually sent it to a replica counts;
items a broken stream never transmitted (the window keeps those the rest of a share), and rounds in which no replica
was SERVING, cost nothing. So a replica that dies charges one try to at most `window` items, however large the
call. While no replica is SERVING the client waits for one, bounded by the deadline, not by a count of rounds.
A request whose encoded size passes the channel's send limit (`max_message_bytes`) fails alone, INVALID_ARGUMENT,
before anything is sent: gRPC would otherwise fail the whole stream at it. A replica whose receive limit is lower
breaks the stream at such a request (gRPC lets it answer nothing else); its RESOURCE_EXHAUSTED names the limit,
and from then on the requests over it fail alone the same way. An item gets a final error
(UNAVAILABLE) only when its attempts or the deadline are spent. Any answer after an id's first final answer is
dropped and counted in `stats.duplicates_dropped`.
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as Counter_

from proctor.clients.streaming import (
    PLAINTEXT,
    Credentials,
    MiB,
    error_result,
    status_behind,
    stream_status,
    unique_ids,
)
from proctor.v1 import reward_pb2, reward_pb2_grpc, teacher_pb2, teacher_pb2_grpc

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
    max_attempts: int = 6  # per item: tries that sent it to a replica, within deadline_s
    backoff_s: float = 0.05
    backoff_max_s: float = 2.0
    item_timeout_s: float = 120.0  # a stream that runs longer is abandoned and its unanswered items resent
    # The whole call, waiting for a replica to come back included: an outage shorter than this costs no item.
    deadline_s: float = 600.0


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


# Stream statuses that say the call itself is refused (credentials, an unknown method), not that a replica failed.
REFUSED = {
    grpc.StatusCode.UNAUTHENTICATED.value[0],
    grpc.StatusCode.PERMISSION_DENIED.value[0],
    grpc.StatusCode.UNIMPLEMENTED.value[0],
}


# How gRPC core words a receive limit's refusal; the server sends it as the stream's RESOURCE_EXHAUSTED status.
_TOO_LARGE = re.compile(r"Received message larger than max \((\d+) vs\. (\d+)\)")


@dataclass(frozen=True)
class StreamFailure:
    why: str
    code: int = grpc.StatusCode.UNAVAILABLE.value[0]
    server_limit: int = 0  # the replica's receive limit, when a request over it broke the stream


@dataclass
class Stats:
    rounds: int = 0
    resent: int = 0
    duplicates_dropped: int = 0
    replica_failures: Counter[str] = field(default_factory=Counter)


async def expand(targets: Sequence[str]) -> tuple[list[str], list[str]]:
    """(targets, why an entry gave none): a `dns:host:port` entry becomes one target per address it resolves to,
    re-resolved every round in the loop's resolver thread (a slow DNS server must not stall the caller's loop); a
    name that does not resolve gives none this round, and says why."""
    loop = asyncio.get_running_loop()
    out: list[str] = []
    unresolved: list[str] = []
    for target in targets:
        if not target.startswith("dns:"):
            out.append(target)
            continue
        host, port = target[4:].rsplit(":", 1)
        try:
            infos = await loop.getaddrinfo(host, int(port), proto=socket.IPPROTO_TCP)
        except OSError as exc:  # socket.gaierror: the name may resolve next round
            unresolved.append(f"{target} did not resolve: {exc}")
            continue
        addresses = {info[4][0] for info in infos}
        out.extend(f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in sorted(str(a) for a in addresses))
    return out, unresolved


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
        window: int = 1024,
    ) -> None:
        """`window`: the most items one stream has sent and not had answered (the server's default
        stream_window); a replica that dies mid-stream costs at most this many items a try."""
        if not targets:
            raise ValueError("at least one target")
        if window < 1:
            raise ValueError("window must be >= 1")
        self.window = window
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

    async def _serving(self) -> tuple[list[str], list[str]]:
        """(the targets that report SERVING, why a `dns:` entry gave no target this round)."""
        targets, unresolved = await expand(self.targets)

        async def check(target: str) -> bool:
            try:
                reply = await health_pb2_grpc.HealthStub(self._channel(target)).Check(
                    health_pb2.HealthCheckRequest(service=self.method.service), timeout=1.0
                )
                return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
            except grpc.aio.AioRpcError:
                return False

        verdicts = await asyncio.gather(*(check(t) for t in targets))
        return [t for t, ok in zip(targets, verdicts, strict=True) if ok], unresolved

    async def run(self, requests: Iterable[Any]) -> dict[str, R]:
        requests = list(requests)
        order = unique_ids(requests)
        pending = {r.id: r for r in requests}
        results: dict[str, R] = {}
        sends: Counter[str] = Counter()  # how often each item was actually sent to a replica
        last_error: dict[str, str] = {}
        sizes = {r.id: r.ByteSize() for r in requests}

        def too_large(limit: int, whose: str) -> None:
            for item_id in [i for i in pending if sizes[i] > limit]:
                del pending[item_id]
                results[item_id] = error_result(
                    self.method.result_type,
                    item_id,
                    grpc.StatusCode.INVALID_ARGUMENT.value[0],
                    f"the request is {sizes[item_id]} bytes encoded, over {whose} {limit}: gRPC fails the whole "
                    "stream at a larger message, so it is not sent",
                )

        too_large(self._max_message_bytes, "the channel's send limit max_message_bytes")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.policy.deadline_s
        rounds = 0

        def give_up(item_id: str, why: str, code: int = grpc.StatusCode.UNAVAILABLE.value[0]) -> None:
            results[item_id] = error_result(
                self.method.result_type,
                item_id,
                code,
                f"gave up after {sends[item_id]} tries ({why}); last: {last_error.get(item_id, 'no answer')}",
            )
            del pending[item_id]

        while pending:
            left = deadline - loop.time()
            if left <= 0:
                for item_id in list(pending):
                    give_up(item_id, f"the call's deadline of {self.policy.deadline_s}s passed")
                break
            rounds += 1
            self.stats.rounds += 1
            replicas, unresolved = await self._serving()
            if not replicas:
                why = "; ".join(["no replica reports SERVING", *unresolved])
                for item_id in pending:
                    last_error[item_id] = why
            else:
                shares = self._split(list(pending), replicas)
                outcomes = await asyncio.gather(
                    *(self._stream(target, [pending[i] for i in ids], left) for target, ids in shares.items())
                )
                for (answers, sent, failure), share in zip(outcomes, shares.values(), strict=True):
                    sends.update(sent)
                    self._take(answers, pending, results, last_error)
                    unanswered = [i for i in share if i in pending]
                    if failure is not None:
                        for item_id in unanswered:
                            last_error[item_id] = failure.why
                        if failure.code in REFUSED:  # no replica will take this call: retrying cannot help
                            for item_id in unanswered:
                                give_up(item_id, "the replica refused the call", failure.code)
                        if failure.server_limit:  # a replica takes less than this channel sends: fail those alone
                            too_large(failure.server_limit, "the replica's receive limit (max_message_bytes)")
                resent = 0
                for item_id in list(pending):
                    if not sends[item_id]:
                        continue  # never transmitted: free to send again
                    if sends[item_id] >= self.policy.max_attempts:
                        give_up(item_id, "attempts spent")
                    else:
                        resent += 1
                self.stats.resent += resent
                if self.metrics is not None and resent:
                    self.metrics.resent.labels(self.method.rpc).inc(resent)
            if pending:
                delay = min(self.policy.backoff_max_s, self.policy.backoff_s * 2 ** (rounds - 1))
                await asyncio.sleep(min(delay * (0.5 + self._rng.random()), max(0.0, deadline - loop.time())))
        if self.metrics is not None:
            m, rpc = self.metrics, self.method.rpc
            errors = sum(1 for r in results.values() if r.HasField("error"))
            m.items.labels(rpc, "ok").inc(len(results) - errors)
            m.items.labels(rpc, "error").inc(errors)
        return {item_id: results[item_id] for item_id in order}

    def _take(self, answers: list[R], pending: dict[str, Any], results: dict[str, R], last: dict[str, str]) -> None:
        """Record a stream's answers: final ones end their item, retryable ones leave it pending."""
        for answer in answers:
            item_id = getattr(answer, "id")  # noqa: B009
            if item_id in results or item_id not in pending:
                self.stats.duplicates_dropped += 1
                if self.metrics is not None:
                    self.metrics.duplicates.labels(self.method.rpc).inc()
                continue
            error = getattr(answer, "error") if answer.HasField("error") else None  # noqa: B009
            if error is not None and error.code in RETRYABLE:
                last[item_id] = f"{error.code}: {error.message}"
                continue
            results[item_id] = answer
            del pending[item_id]

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

    async def _stream(
        self, target: str, requests: list[Any], left_s: float
    ) -> tuple[list[R], list[str], StreamFailure | None]:
        """The answers one replica gave, the ids its stream transmitted, and why it ended early (None if it did not).

        gRPC takes the next request from the iterator only once the previous one is written, so an id counts as
        sent when the one after it is asked for (or the iterator is finished), or when it is answered. The next
        request waits while `window` sent ones are unanswered."""
        answers: list[R] = []
        sent: list[str] = []
        room = asyncio.Event()
        ended = False

        async def outgoing() -> AsyncIterator[Any]:
            for request in requests:
                while not ended and len(sent) - len(answers) >= self.window:
                    room.clear()
                    await room.wait()
                if ended:  # the stream broke while the window was full: nothing more to send
                    return
                yield request
                sent.append(request.id)

        stub = self.method.stub(self._channel(target))
        timeout = min(self.policy.item_timeout_s, left_s)

        def start(items: AsyncIterator[Any] | Iterator[Any], deadline_s: float | None = None) -> Any:
            return getattr(stub, self.method.rpc)(items, metadata=self._credentials.metadata(), timeout=deadline_s)

        call = start(outgoing())
        failure = None
        try:
            async with asyncio.timeout(timeout):
                async for answer in call:
                    answers.append(answer)
                    room.set()
        except TimeoutError:
            call.cancel()
            self._failed(target)
            failure = StreamFailure(f"{target} did not answer within {timeout:.3g}s")
        except grpc.aio.AioRpcError as exc:
            self._failed(target)
            code, details = stream_status(await status_behind(exc, start))
            over = _TOO_LARGE.search(details) if code == grpc.StatusCode.RESOURCE_EXHAUSTED else None
            failure = StreamFailure(f"{target}: {code.name}: {details}", code.value[0], int(over[2]) if over else 0)
        finally:
            ended = True
            room.set()
        written = set(sent)
        sent.extend(i for i in (getattr(a, "id") for a in answers) if i not in written)  # noqa: B009
        return answers, sent, failure
