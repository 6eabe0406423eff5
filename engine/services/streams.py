"""The machinery every streaming RPC shares: admission, backpressure, per-item errors, deadlines, drain, metrics.

An item's life: read from the stream -> a slot in the call's window (backpressure: the server stops reading while
the window is full) -> its handler. A handler answers at once what needs no backend (validation errors, rule-only
rewards): those items never queue, never wait behind the model and cost no task. What needs the backend comes back
as a coroutine: it takes a slot in the service's queue (none free: RESOURCE_EXHAUSTED for that item, at once) and
runs as its own task. Every result is sent as soon as it is ready. A failing item fails alone; a cancelled call
cancels its items' tasks, which stops their backend work.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from types import CoroutineType
from typing import Any, Generic, TypeVar, cast

from proctor.engine.errors import ItemError
from proctor.engine.services import convert
from proctor.engine.services.metrics import Metrics

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Res = TypeVar("Res")


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


class _Window:
    """The items one call has in flight; its one reader waits while it is full. asyncio.Semaphore would do, at a
    generator expression per acquire, which shows on rule rewards and critic triples."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._freed = asyncio.Event()

    async def acquire(self) -> None:
        while self.free <= 0:
            self._freed.clear()
            await self._freed.wait()
        self.free -= 1

    def release(self) -> None:
        self.free += 1
        self._freed.set()


@dataclass
class ServiceContext:
    name: str
    metrics: Metrics
    lifecycle: Lifecycle
    admission: Admission
    stream_window: int
    max_items_per_stream: int = 1_000_000
    inflight: Any = field(init=False)

    def __post_init__(self) -> None:
        self.inflight = self.metrics.inflight_items.labels(self.name)


@dataclass
class StreamSpec(Generic[Req, Res]):
    """One streaming RPC: its name, the handler of one item, and its result message type. Every proctor request
    item has `id` and `timeout_ms`; every result has `id` and `error`. The handler returns the result when it
    needs no backend, else a coroutine that computes it (an `async def` handler always does the latter)."""

    rpc: str
    handle: Callable[[Req], Res | Coroutine[Any, Any, Res]]
    result_type: Callable[..., Res]

    def item_id(self, req: Req) -> str:
        return str(getattr(req, "id"))  # noqa: B009 (Req is any proctor request message)

    def timeout_ms(self, req: Req) -> int:
        return int(getattr(req, "timeout_ms"))  # noqa: B009

    def error_result(self, item_id: str, error: ItemError) -> Res:
        return self.result_type(id=item_id, error=convert.status(error))


_END = object()


# Results per reply message of a batched stream: bounded so that a burst of ready results stays a sane message.
MAX_RESULTS_PER_MESSAGE = 512


async def run_stream(
    svc: ServiceContext, spec: StreamSpec[Req, Res], requests: AsyncIterator[Req]
) -> AsyncIterator[Res]:
    """One item per message each way."""
    async for results in _run_items(svc, spec, requests):
        for result in results:
            yield result


async def run_batched_stream(
    svc: ServiceContext,
    spec: StreamSpec[Req, Res],
    batches: AsyncIterator[Any],
    reply: Callable[..., Any],
) -> AsyncIterator[Any]:
    """Many items per message each way (`batches` have `items`); every item is handled exactly as in run_stream,
    and each reply message (`reply(items=results)`, e.g. RewardResults) carries the results ready when it is sent."""

    async def items() -> AsyncIterator[Req]:
        async for batch in batches:
            for item in batch.items:
                yield item

    async for results in _run_items(svc, spec, items()):
        for start in range(0, len(results), MAX_RESULTS_PER_MESSAGE):
            yield reply(items=results[start : start + MAX_RESULTS_PER_MESSAGE])


async def _run_items(
    svc: ServiceContext, spec: StreamSpec[Req, Res], requests: AsyncIterator[Req]
) -> AsyncIterator[list[Res]]:
    """Admit, run and answer every item of a call; yields the results in the order they finish, as lists of
    those ready together."""
    out: asyncio.Queue[Any] = asyncio.Queue()
    window = _Window(svc.stream_window)
    tasks: set[asyncio.Task[None]] = set()
    in_flight_ids: set[str] = set()
    read = 0
    item_counters: dict[str, Any] = {}  # labelled children, looked up once per code, not once per item
    item_seconds = svc.metrics.item_seconds.labels(svc.name, spec.rpc)

    def answer(result: Res, code: str, received: float) -> None:
        counter = item_counters.get(code)
        if counter is None:
            counter = item_counters[code] = svc.metrics.items.labels(svc.name, spec.rpc, code)
        counter.inc()
        item_seconds.observe(time.perf_counter() - received)
        out.put_nowait(result)

    def failed(item_id: str, exc: Exception) -> tuple[Res, str]:
        if isinstance(exc, ItemError):
            return spec.error_result(item_id, exc), exc.code
        # a bug or a backend failure: report it on the item, keep the stream
        log.error("%s item %r failed", spec.rpc, item_id, exc_info=exc)
        err = ItemError(f"internal error: {type(exc).__name__}: {exc}", code="INTERNAL")
        return spec.error_result(item_id, err), err.code

    async def run_item(work: Coroutine[Any, Any, Res], timeout: int, item_id: str, received: float) -> None:
        try:
            result = await (asyncio.wait_for(work, timeout / 1000) if timeout else work)
            code = "OK"
        except TimeoutError:
            late = ItemError(f"item not finished within {timeout} ms", "timeout_ms", "DEADLINE_EXCEEDED")
            result, code = spec.error_result(item_id, late), late.code
        except Exception as exc:
            result, code = failed(item_id, exc)
        finally:
            svc.admission.release()
            svc.inflight.dec()
            window.release()
            in_flight_ids.discard(item_id)
        answer(result, code, received)

    def admit(req: Req) -> None:
        nonlocal read
        read += 1
        received = time.perf_counter()
        item_id = spec.item_id(req)
        rejection = None
        if read > svc.max_items_per_stream:
            rejection = ItemError(
                f"this stream passed its limit of {svc.max_items_per_stream} items; open a new stream",
                code="RESOURCE_EXHAUSTED",
            )
        elif not item_id:
            rejection = ItemError("required: every item needs a caller-chosen id", "id")
        elif item_id in in_flight_ids:
            rejection = ItemError(f"{item_id!r} is already in flight on this stream", "id")
        if rejection is not None:
            window.release()
            answer(spec.error_result(item_id, rejection), rejection.code, received)
            return
        try:
            outcome = spec.handle(req)
        except Exception as exc:
            window.release()
            answer(*failed(item_id, exc), received)
            return
        if not isinstance(outcome, CoroutineType):  # a concrete type: an ABC check costs µs per item
            window.release()
            answer(cast(Res, outcome), "OK", received)
            return
        if not svc.admission.try_acquire():
            outcome.close()
            window.release()
            full = ItemError(
                f"{svc.name} is at capacity ({svc.admission.capacity} items queued); retry later",
                code="RESOURCE_EXHAUSTED",
            )
            answer(spec.error_result(item_id, full), full.code, received)
            return
        svc.inflight.inc()
        in_flight_ids.add(item_id)
        task = asyncio.create_task(run_item(outcome, spec.timeout_ms(req), item_id, received))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def read_items() -> None:
        iterator = aiter(requests)
        while True:
            await window.acquire()  # backpressure: no read while the window is full
            try:
                req = await anext(iterator)
            except StopAsyncIteration:
                return
            admit(req)

    async def reader() -> None:
        items = asyncio.create_task(read_items())
        drain = asyncio.create_task(svc.lifecycle.draining.wait())
        try:
            await asyncio.wait({items, drain}, return_when=asyncio.FIRST_COMPLETED)
            if items.done():
                items.result()  # a broken request stream ends the call
            else:  # draining: read no more; what was read still finishes
                items.cancel()
            while tasks:
                await asyncio.wait(set(tasks))
            out.put_nowait(_END)
        except BaseException as exc:
            out.put_nowait(exc)
            raise
        finally:
            items.cancel()
            drain.cancel()

    reading = asyncio.create_task(reader())
    final = "CANCELLED"  # the call was cancelled or its deadline passed, unless we get to the end
    try:
        while True:
            ready = [await out.get()]
            while not out.empty():
                ready.append(out.get_nowait())
            results = [r for r in ready if r is not _END and not isinstance(r, BaseException)]
            if results:
                yield results
            if ready[-1] is _END:
                final = "OK"
                break
            if isinstance(ready[-1], BaseException):
                final = "UNKNOWN"
                raise ready[-1]
    finally:
        svc.metrics.requests.labels(svc.name, spec.rpc, final).inc()
        reading.cancel()
        for task in list(tasks):
            task.cancel()
