"""A dynamic batcher: items arrive one by one on the event loop, leave in batches bounded by items and tokens.

The batcher wakes when `max_items` items or `max_tokens` tokens are waiting, or `max_wait_s` after the oldest
arrived. It then takes what is waiting, oldest first (up to POOL_BATCHES batches' worth: under load that is a
big pool), sorts it by length and cuts it into batches of similar lengths, each within `max_items` and within
`max_tokens` *padded* slots (items x longest): the padding of a batch is only the spread of lengths inside it.
Batches run in a worker thread, so the event loop keeps reading streams meanwhile. A cancelled request's items
are dropped before their batch runs.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
POOL_BATCHES = 4  # what one wake-up may take and sort: up to this many batches' worth of items and tokens


@dataclass
class _Request(Generic[R]):
    """One submit(): its items' results fill in as their batches finish; one future for all of them (a future and
    a gather per item cost more than the batching saves on cheap items)."""

    future: asyncio.Future[list[tuple[R, float, float]]]
    results: list[tuple[R, float, float] | None]
    left: int

    def done(self) -> bool:  # answered, failed or cancelled: its items are not run
        return self.future.done()


@dataclass
class _Pending(Generic[T, R]):
    item: T
    size: int
    request: _Request[R]
    index: int  # in request.results
    enqueued: float


class DynamicBatcher(Generic[T, R]):
    def __init__(
        self,
        run_batch: Callable[[list[T]], list[R]],
        size_of: Callable[[T], int],
        max_items: int,
        max_tokens: int,
        max_wait_s: float,
        on_batch: Callable[[int, int, int], None] | None = None,
    ) -> None:
        """`run_batch` is blocking (it runs in a thread) and returns one result per item, in order.
        `on_batch(items, tokens, slots)` is told every batch's size, real tokens and padded slots (metrics)."""
        self._run_batch = run_batch
        self._size_of = size_of
        self.max_items = max_items
        self.max_tokens = max_tokens
        self.max_wait_s = max_wait_s
        self._on_batch = on_batch or (lambda items, tokens, slots: None)
        self._queue: collections.deque[_Pending[T, R]] = collections.deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def depth(self) -> int:
        return len(self._queue)

    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def submit(self, items: list[T]) -> list[tuple[R, float, float]]:
        """Each item's result, queue time and batch inference time (seconds). The items are queued at once, so
        that they share a batch when they fit one (the same items then always meet the same batch)."""
        if not items:
            return []
        now = time.perf_counter()
        request: _Request[R] = _Request(asyncio.get_running_loop().create_future(), [None] * len(items), len(items))
        self._queue.extend(_Pending(item, self._size_of(item), request, i, now) for i, item in enumerate(items))
        self._wakeup.set()
        return await request.future  # cancelling the caller cancels the future: its items are dropped

    def _take(self) -> list[_Pending[T, R]]:
        pool: list[_Pending[T, R]] = []
        tokens = 0
        while self._queue and len(pool) < POOL_BATCHES * self.max_items:
            nxt = self._queue[0]
            if nxt.request.done():
                self._queue.popleft()
                continue
            if pool and tokens + nxt.size > POOL_BATCHES * self.max_tokens:
                break
            pool.append(self._queue.popleft())
            tokens += nxt.size
        return pool

    def _cut(self, pool: list[_Pending[T, R]]) -> list[list[_Pending[T, R]]]:
        """The pool by length, in batches within max_items and max_tokens padded slots (a longer item alone)."""
        batches: list[list[_Pending[T, R]]] = []
        for p in sorted(pool, key=lambda p: p.size):
            batch = batches[-1] if batches else None
            if batch is None or len(batch) >= self.max_items or (len(batch) + 1) * p.size > self.max_tokens:
                batches.append([p])
            else:
                batch.append(p)
        return batches

    def _full(self) -> bool:
        items = tokens = 0
        for p in self._queue:
            if p.request.done():
                continue
            items, tokens = items + 1, tokens + p.size
            if items >= self.max_items or tokens >= self.max_tokens:
                return True
        return False

    async def _loop(self) -> None:
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            deadline = self._queue[0].enqueued + self.max_wait_s
            while not self._full() and (left := deadline - time.perf_counter()) > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), left)
                except TimeoutError:
                    break
            for batch in self._cut(self._take()):
                await self._run(batch)

    async def _run(self, batch: list[_Pending[T, R]]) -> None:
        batch = [p for p in batch if not p.request.done()]  # cancelled while an earlier batch ran
        if not batch:
            return
        self._on_batch(len(batch), sum(p.size for p in batch), len(batch) * batch[-1].size)
        started = time.perf_counter()
        try:
            results = await asyncio.to_thread(self._run_batch, [p.item for p in batch])
        except Exception as exc:  # the model failed: fail this batch's requests, keep serving
            for p in batch:
                if not p.request.done():
                    p.request.future.set_exception(exc)
            return
        inference = time.perf_counter() - started
        for p, result in zip(batch, results, strict=True):
            request = p.request
            if request.done():
                continue
            request.results[p.index] = (result, started - p.enqueued, inference)
            request.left -= 1
            if not request.left:
                request.future.set_result(request.results)  # type: ignore[arg-type]  # every slot filled
