"""What a service's core shares with both doors: readiness and drain, its queue bound, its metrics, and how a call
and its items are recorded.

`Admission` is the service-wide queue bound: the gRPC streams and the HTTP routes take their slots from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from proctor.engine.cores.metrics import Metrics
from proctor.engine.errors import ItemError

T = TypeVar("T")


@dataclass(frozen=True)
class Later(Generic[T]):
    """Work a core defers: nothing runs (no coroutine exists) until a door awaits `run()`, so an item refused before
    its turn leaves nothing behind."""

    run: Callable[[], Awaitable[T]]


# The three services' names: their gRPC service names, also the `service` label of every metric and the name each
# is known by in health checks, whichever door a call came through.
TEACHER = "proctor.v1.Teacher"
CRITIC = "proctor.v1.Critic"
REWARD = "proctor.v1.RewardModel"


class Lifecycle:
    """Server-wide state the services consult: readiness per service and draining."""

    def __init__(self) -> None:
        self.draining = asyncio.Event()
        self.ready: set[str] = set()


class Admission:
    """A bounded count of admitted items; acquiring never waits."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0

    def try_acquire(self) -> bool:
        if self.used >= self.capacity:
            return False
        self.used += 1
        return True

    def release(self) -> None:
        self.used -= 1


@dataclass
class ServiceContext:
    name: str
    metrics: Metrics
    lifecycle: Lifecycle
    admission: Admission
    stream_window: int
    max_items_per_stream: int = 1_000_000
    stream_window_bytes: int = 64 * 1024 * 1024  # unsent result bytes one call may hold before it stops reading
    max_message_bytes: int = 64 * 1024 * 1024  # the server's gRPC limit: a larger result is an item error
    inflight: Any = field(init=False)

    def __post_init__(self) -> None:
        self.inflight = self.metrics.inflight_items.labels(self.name)

    @contextlib.contextmanager
    def admitted(self, items: int) -> Iterator[None]:
        """`items` slots of the service's queue, counted in flight, for the duration; none free is RESOURCE_EXHAUSTED
        at once (nothing waits), and more than the queue holds is INVALID_ARGUMENT (a retry cannot help)."""
        if items > self.admission.capacity:
            raise ItemError(
                f"this request is {items} items > {self.name}'s queue of {self.admission.capacity} "
                "(limits.max_queued_items); split it"
            )
        taken = 0
        try:
            for _ in range(items):
                if not self.admission.try_acquire():
                    raise ItemError(
                        f"{self.name} is at capacity ({self.admission.capacity} items queued); retry later",
                        code="RESOURCE_EXHAUSTED",
                    )
                taken += 1
                self.inflight.inc()
            yield
        finally:
            for _ in range(taken):
                self.admission.release()
                self.inflight.dec()


class CallMetrics:
    """The series every RPC records, in one place: items answered by code, item seconds, and the call's final code.
    ItemStream records through it; so does GenerateTriples, whose one request makes a stream of results."""

    def __init__(self, svc: ServiceContext, rpc: str) -> None:
        self.svc = svc
        self.rpc = rpc
        self._counters: dict[str, Any] = {}  # labelled children, looked up once per code, not once per item
        self._item_seconds = svc.metrics.item_seconds.labels(svc.name, rpc)

    def item(self, code: str, received: float) -> None:
        counter = self._counters.get(code)
        if counter is None:
            counter = self._counters[code] = self.svc.metrics.items.labels(self.svc.name, self.rpc, code)
        counter.inc()
        self._item_seconds.observe(time.perf_counter() - received)

    def call(self, final: str) -> None:
        self.svc.metrics.requests.labels(self.svc.name, self.rpc, final).inc()
