"""A dynamic batcher: items arrive one by one on the event loop, leave in batches bounded by items and tokens.

A batch closes when it holds `max_items`, would exceed `max_tokens`, or `max_wait_s` has passed since its first
item. Items are sorted by length inside a batch (less padding); the batch runs in a worker thread, so the event
loop keeps reading streams meanwhile. A cancelled item is dropped before its batch runs.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Pending(Generic[T, R]):
    item: T
    size: int
    future: asyncio.Future[tuple[R, float, float]]  # result, queue seconds, inference seconds
    enqueued: float = field(default_factory=time.perf_counter)


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
        loop = asyncio.get_running_loop()
        pending: list[_Pending[T, R]] = [_Pending(i, self._size_of(i), loop.create_future()) for i in items]
        self._queue.extend(pending)
        self._wakeup.set()
        try:
            return list(await asyncio.gather(*(p.future for p in pending)))
        except asyncio.CancelledError:
            for p in pending:
                p.future.cancel()
            raise

    def _take(self) -> list[_Pending[T, R]]:
        batch: list[_Pending[T, R]] = []
        tokens = 0
        while self._queue and len(batch) < self.max_items:
            nxt = self._queue[0]
            if nxt.future.cancelled():
                self._queue.popleft()
                continue
            if batch and tokens + nxt.size > self.max_tokens:
                break
            batch.append(self._queue.popleft())
            tokens += nxt.size
        return batch

    def _full(self) -> bool:
        live = [p for p in self._queue if not p.future.cancelled()]
        return len(live) >= self.max_items or sum(p.size for p in live) >= self.max_tokens

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
            batch = self._take()
            if not batch:
                continue
            batch.sort(key=lambda p: p.size)
            self._on_batch(len(batch), sum(p.size for p in batch), len(batch) * batch[-1].size)
            started = time.perf_counter()
            try:
                results = await asyncio.to_thread(self._run_batch, [p.item for p in batch])
            except Exception as exc:  # the model failed: fail this batch's items, keep serving
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            inference = time.perf_counter() - started
            for p, result in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result((result, started - p.enqueued, inference))
