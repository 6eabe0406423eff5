"""The machinery every streaming RPC shares: admission, backpressure, per-item errors, deadlines, drain, metrics.

An item's life, in `ItemStream`: read from the stream -> a slot in the call's window -> refused at the door (a
message that did not decode, no id, an id already in the window, past the per-stream limit) or handled. A handler
validates and answers at once what needs no backend (validation errors, rule-only rewards): those items never queue
and cost no task. What needs the backend comes back as a coroutine: it takes a slot in the service's queue
(`Admission`; none free: RESOURCE_EXHAUSTED for that item, at once) and runs as its own task. A result larger than
the message limit becomes that item's error. Every result is encoded once, when it is ready (its size is its
encoding's), and sent as soon as it can be, as those bytes: a batch reply is its results' encodings one after
another, as protobuf encodes a reply message holding them, without building that message (which would copy every
result into it, then encode it all again); the gate's serializer sends encoded replies as they are. A result's
window slot is freed only once it is sent: a caller that does not read stops the server reading (backpressure), so a
call holds at most `stream_window` items and `stream_window_bytes` of unsent results. A failing item fails alone; a
cancelled call cancels its items' tasks, which stops their backend work.

`Admission` (cores/context.py) is the service-wide queue bound the HTTP front takes its slots from too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from types import CoroutineType
from typing import Any, Generic, NamedTuple, TypeVar, cast

from google.protobuf.message import Message

from proctor.engine.cores.context import CallMetrics, ServiceContext
from proctor.engine.doors.grpc import convert
from proctor.engine.errors import ItemError

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Res = TypeVar("Res", bound=Message)

# Results per reply message of a batched stream: bounded so that a burst of ready results stays a sane message.
MAX_RESULTS_PER_MESSAGE = 512
# The event-loop time one call's reader may take at a stretch before it lets the other callers (and Health) run.
INLINE_SLICE_S = 0.005
# What a result adds to a reply message beyond its own bytes: the field's tag and a length of up to 5 bytes.
_ITEM_FRAMING = 6
# The tag of every batch reply's `repeated ... items = 1`: field 1, length-delimited.
_ITEMS_TAG = b"\x0a"


class Undecodable(NamedTuple):
    """A request message that did not parse, in place of the message: the gate's deserializer never raises, so the
    stream answers it as an item error and goes on (a raising deserializer ends the whole call with UNKNOWN)."""

    size: int
    message_type: str


class DamagedBatch(NamedTuple):
    """A batch message that did not parse as a whole, split into its items: those that parse, and an
    `Undecodable` in place of each that does not, in their order."""

    entries: list[Any]


@dataclass
class StreamSpec(Generic[Req, Res]):
    """One streaming RPC: its name, the handler of one item, and its result message type. Every proctor request
    item has `id` and `timeout_ms`; every result has `id` and `error`. The handler validates the item and returns
    the result when it needs no backend, else a coroutine that computes it. `shrink` says what to ask for less of
    when a result is over the message limit (e.g. "params.n, params.max_tokens or params.top_logprobs")."""

    rpc: str
    handle: Callable[[Req], Res | Coroutine[Any, Any, Res]]
    result_type: Callable[..., Res]
    shrink: str = ""

    def error_result(self, item_id: str, error: ItemError) -> Res:
        return self.result_type(id=item_id, error=convert.status(error))


class _Window:
    """Slots for the items a call holds, from read until their result is sent; the one reader waits while there
    are none, or while the unsent results pass their byte bound."""

    def __init__(self, items: int, max_bytes: int) -> None:
        self.free = items
        self.max_bytes = max_bytes
        self.unsent_bytes = 0
        self._freed = asyncio.Event()

    async def acquire(self) -> None:
        while self.free <= 0 or self.unsent_bytes >= self.max_bytes:
            self._freed.clear()
            await self._freed.wait()
        self.free -= 1

    def release(self, sent_bytes: int) -> None:
        self.free += 1
        self.unsent_bytes -= sent_bytes
        self._freed.set()


class _Ready(NamedTuple):
    """A result waiting to be sent, encoded, and its item's id (to leave the window)."""

    data: bytes
    item_id: str


_END = object()


class ItemStream(Generic[Req, Res]):
    """One call's items: `results()` yields them as they are ready; `sent()` after each is on the wire."""

    def __init__(self, svc: ServiceContext, spec: StreamSpec[Req, Res], requests: AsyncIterator[Req | Undecodable]):
        self.svc = svc
        self.spec = spec
        self._requests = requests
        self._window = _Window(svc.stream_window, svc.stream_window_bytes)
        self._ready: deque[_Ready | object] = deque()  # _Ready, then _END or the exception that ended reading
        self._readied = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._held: set[str] = set()  # ids in the window: read, not yet sent
        self._read = 0
        self._metrics = CallMetrics(svc, spec.rpc)
        self._max_result_bytes = svc.max_message_bytes - _ITEM_FRAMING

    # ---- the reader: the door, then the handler, then the queue ------------------------------------------------

    async def _read_all(self) -> None:
        iterator = aiter(self._requests)
        ran_since = time.perf_counter()
        while True:
            await self._window.acquire()  # backpressure: no read while the window is full
            try:
                req = await anext(iterator)
            except StopAsyncIteration:
                self._window.release(0)
                return
            self._take(req)
            # The items of one batch message arrive without a suspension between them, and each is checked (and a
            # short one answered) inline: past a slice of loop time, the reader lets everyone else run first.
            if time.perf_counter() - ran_since > INLINE_SLICE_S:
                await asyncio.sleep(0)
                ran_since = time.perf_counter()

    def _take(self, req: Req | Undecodable) -> None:
        self._read += 1
        received = time.perf_counter()
        if isinstance(req, Undecodable):
            bad = ItemError(f"message {self._read} ({req.size} bytes) is not a valid {req.message_type}", "")
            self._answer("", self.spec.error_result("", bad), bad.code, received, held=False)
            return
        item_id = str(getattr(req, "id"))  # noqa: B009 (Req is any proctor request message)
        refusal = self._refusal(item_id)
        if refusal is not None:
            self._answer(item_id, self.spec.error_result(item_id, refusal), refusal.code, received, held=False)
            return
        self._held.add(item_id)
        try:
            outcome = self.spec.handle(req)
        except Exception as exc:
            self._answer(item_id, *self._failed(item_id, exc), received)
            return
        if not isinstance(outcome, CoroutineType):  # a concrete type: an ABC check costs µs per item
            self._answer(item_id, cast(Res, outcome), "OK", received)
            return
        if not self.svc.admission.try_acquire():
            outcome.close()
            full = ItemError(
                f"{self.svc.name} is at capacity ({self.svc.admission.capacity} items queued); retry later",
                code="RESOURCE_EXHAUSTED",
            )
            self._answer(item_id, self.spec.error_result(item_id, full), full.code, received)
            return
        self.svc.inflight.inc()
        timeout_ms = int(getattr(req, "timeout_ms"))  # noqa: B009
        task = asyncio.create_task(self._run(outcome, timeout_ms, item_id, received))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _refusal(self, item_id: str) -> ItemError | None:
        if self._read > self.svc.max_items_per_stream:
            return ItemError(
                f"this stream passed its limit of {self.svc.max_items_per_stream} items; open a new stream",
                code="RESOURCE_EXHAUSTED",
            )
        if not item_id:
            return ItemError("required: every item needs a caller-chosen id", "id")
        if item_id in self._held:
            return ItemError(f"{item_id!r} is already in flight on this stream", "id")
        return None

    async def _run(self, work: Coroutine[Any, Any, Res], timeout: int, item_id: str, received: float) -> None:
        try:
            result = await (asyncio.wait_for(work, timeout / 1000) if timeout else work)
            code = "OK"
        except TimeoutError:
            late = ItemError(f"item not finished within {timeout} ms", "timeout_ms", "DEADLINE_EXCEEDED")
            result, code = self.spec.error_result(item_id, late), late.code
        except Exception as exc:
            result, code = self._failed(item_id, exc)
        finally:
            self.svc.admission.release()
            self.svc.inflight.dec()
        self._answer(item_id, result, code, received)

    def _failed(self, item_id: str, exc: Exception) -> tuple[Res, str]:
        if isinstance(exc, ItemError):
            return self.spec.error_result(item_id, exc), exc.code
        # a bug or a backend failure: report it on the item, keep the stream
        log.error("%s item %r failed", self.spec.rpc, item_id, exc_info=exc)
        err = ItemError(f"internal error: {type(exc).__name__}: {exc}", code="INTERNAL")
        return self.spec.error_result(item_id, err), err.code

    def _answer(self, item_id: str, result: Res, code: str, received: float, held: bool = True) -> None:
        """Queue a result for sending; one over the message limit is replaced by an error saying what would fit."""
        data = result.SerializeToString()
        size = len(data)
        if size > self._max_result_bytes:
            shrink = f"; ask for less: {self.spec.shrink}" if self.spec.shrink else ""
            big = ItemError(  # not retryable: the same item would make the same result
                f"the result is {size} bytes, over the server's max_message_bytes {self.svc.max_message_bytes}: "
                f"about {100 * self._max_result_bytes // size}% of it would fit{shrink}"
            )
            result, code = self.spec.error_result(item_id, big), big.code
            data = result.SerializeToString()
        self._metrics.item(code, received)
        self._window.unsent_bytes += len(data)
        self._ready.append(_Ready(data, item_id if held else ""))
        self._readied.set()

    async def _reader(self) -> None:
        items = asyncio.create_task(self._read_all())
        drain = asyncio.create_task(self.svc.lifecycle.draining.wait())
        try:
            await asyncio.wait({items, drain}, return_when=asyncio.FIRST_COMPLETED)
            if items.done():
                items.result()  # a broken request stream ends the call
            else:  # draining: read no more; what was read still finishes
                items.cancel()
            while self._tasks:
                await asyncio.wait(set(self._tasks))
            self._ready.append(_END)
        except BaseException as exc:
            self._ready.append(exc)
            raise
        finally:
            self._readied.set()
            items.cancel()
            drain.cancel()

    # ---- the writer's side ----------------------------------------------------------------------------------

    async def results(self) -> AsyncIterator[list[_Ready]]:
        """The results in the order they finish, as lists of those ready together. The caller sends them and
        calls `sent()` for each; only then do their window slots free."""
        reading = asyncio.create_task(self._reader())
        final = "CANCELLED"  # the call was cancelled or its deadline passed, unless we get to the end
        try:
            while True:
                while not self._ready:
                    self._readied.clear()
                    await self._readied.wait()
                ready: list[_Ready] = []
                end: object = None
                while self._ready:
                    entry = self._ready.popleft()
                    if isinstance(entry, _Ready):
                        ready.append(entry)
                    else:
                        end = entry
                if ready:
                    yield ready
                if end is _END:
                    final = "OK"
                    break
                if isinstance(end, BaseException):
                    final = "UNKNOWN"
                    raise end
        finally:
            self._metrics.call(final)
            reading.cancel()
            for task in list(self._tasks):
                task.cancel()

    def sent(self, ready: _Ready) -> None:
        self._held.discard(ready.item_id)
        self._window.release(len(ready.data))


async def run_stream(
    svc: ServiceContext, spec: StreamSpec[Req, Res], requests: AsyncIterator[Req | Undecodable]
) -> AsyncIterator[bytes]:
    """One item per message each way; each reply is one encoded result."""
    stream = ItemStream(svc, spec, requests)
    async for ready in stream.results():
        for entry in ready:
            yield entry.data
            stream.sent(entry)  # gRPC asks for the next message once this one is written


async def run_batched_stream(
    svc: ServiceContext, spec: StreamSpec[Req, Res], batches: AsyncIterator[Any]
) -> AsyncIterator[bytes]:
    """Many items per message each way (`batches` have `items`); every item is handled exactly as in run_stream,
    and each reply, an encoded batch reply message (`repeated ... items = 1`, e.g. RewardResults), carries the
    results ready when it is sent, as many as fit in one message."""

    async def items() -> AsyncIterator[Req | Undecodable]:
        async for batch in batches:
            if isinstance(batch, Undecodable):
                yield batch
                continue
            if isinstance(batch, DamagedBatch):
                for entry in batch.entries:
                    yield entry
                continue
            for item in batch.items:
                yield item

    stream = ItemStream(svc, spec, items())
    limit = svc.max_message_bytes
    async for ready in stream.results():
        start = 0
        while start < len(ready):
            end, size = start + 1, len(ready[start].data) + _ITEM_FRAMING
            while end < len(ready) and end - start < MAX_RESULTS_PER_MESSAGE:
                size += len(ready[end].data) + _ITEM_FRAMING
                if size > limit:
                    break
                end += 1
            yield b"".join([part for entry in ready[start:end] for part in _framed(entry.data)])
            for entry in ready[start:end]:
                stream.sent(entry)
            start = end


def _framed(data: bytes) -> tuple[bytes, bytes, bytes]:
    """An encoded result as an entry of a batch reply's `items`: the field's tag, the varint of its length, itself."""
    size = len(data)
    length = bytearray()
    while size > 0x7F:
        length.append(size & 0x7F | 0x80)
        size >>= 7
    length.append(size)
    return _ITEMS_TAG, bytes(length), data
