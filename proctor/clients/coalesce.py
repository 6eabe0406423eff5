"""One rollout per call, many calls at once, few streams: for trainers that ask for rewards a sample at a time.

verl's reward loop calls a reward function once per sample, thousands of times concurrently. A gRPC call each
would cost a stream per rollout (and, for a blocking function, a thread held on its own RPC). A coalescer keeps
one channel and gathers the calls that arrive within `window_s` (or `max_batch` of them) into one RewardBatched
stream; each caller gets its own result back.

- `RewardCoalescer`: on one asyncio loop (create and use it there). A target of several comma-separated
  replicas goes through `ReplicaClient` (exactly one result per rollout, failed replicas' items resent elsewhere).
- `coalescer_for_loop(target)`: the running loop's coalescer for a target, made on first use.
- `background_coalescer(target)`: one per process for blocking callers, on a daemon thread of its own; `reward`
  blocks the calling thread on a future, never on an RPC of its own.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import weakref
from typing import Any

from proctor.clients.replicas import REWARD, ReplicaClient
from proctor.clients.reward import AsyncRewardClient
from proctor.v1 import reward_pb2

WINDOW_S = 0.005  # long enough for a burst of calls to meet, short beside a reward's own latency
MAX_BATCH = 4096


class RewardCoalescer:
    def __init__(self, target: str, *, window_s: float = WINDOW_S, max_batch: int = MAX_BATCH, **options: Any) -> None:
        """`options` go to AsyncRewardClient (timeout_s, credentials, max_message_bytes), or to ReplicaClient
        (credentials, max_message_bytes) for several replicas."""
        self.target = target
        self.window_s = window_s
        self.max_batch = max_batch
        self._options = options
        self._client: AsyncRewardClient | ReplicaClient[reward_pb2.RewardResult] | None = None
        self._pending: list[tuple[reward_pb2.RewardRequest, asyncio.Future[reward_pb2.RewardResult]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._ids = itertools.count()
        self.streams = 0  # streams opened so far (how well calls coalesce)

    async def reward(self, request: reward_pb2.RewardRequest) -> reward_pb2.RewardResult:
        """The result of one request. The request is the coalescer's from here on: its id is replaced by one
        unique on the shared streams (the result keeps that id)."""
        loop = asyncio.get_running_loop()
        request.id = str(next(self._ids))
        future: asyncio.Future[reward_pb2.RewardResult] = loop.create_future()
        self._pending.append((request, future))
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.window_s, self._flush)
        return await future

    async def close(self) -> None:
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)
        if self._client is not None:
            await self._client.close()

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if self._client is None:
            self._client = self._connect()
        task = asyncio.get_running_loop().create_task(self._send(self._client, batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    def _connect(self) -> AsyncRewardClient | ReplicaClient[reward_pb2.RewardResult]:
        targets = [t.strip() for t in self.target.split(",") if t.strip()]
        if len(targets) == 1:
            return AsyncRewardClient(targets[0], **self._options)
        options = {k: v for k, v in self._options.items() if k in ("credentials", "max_message_bytes")}
        return ReplicaClient(targets, REWARD, **options)

    async def _send(
        self,
        client: AsyncRewardClient | ReplicaClient[reward_pb2.RewardResult],
        batch: list[tuple[reward_pb2.RewardRequest, asyncio.Future[reward_pb2.RewardResult]]],
    ) -> None:
        self.streams += 1
        requests = [request for request, _ in batch]
        try:
            if isinstance(client, ReplicaClient):
                results = await client.run(requests)
            else:
                results = await client.reward(requests)
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # the stream could not even be made: every caller hears why
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for request, future in batch:  # run_async answers every id: a missing one is a client-made error
            if not future.done():
                future.set_result(results[request.id])


_per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, RewardCoalescer]] = (
    weakref.WeakKeyDictionary()
)


def coalescer_for_loop(target: str, **options: Any) -> RewardCoalescer:
    """The running loop's coalescer for `target` (a channel belongs to the loop that made it)."""
    by_target = _per_loop.setdefault(asyncio.get_running_loop(), {})
    if target not in by_target:
        by_target[target] = RewardCoalescer(target, **options)
    return by_target[target]


class BackgroundCoalescer:
    """A RewardCoalescer on a daemon thread's loop, for blocking callers on any thread."""

    def __init__(self, target: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="proctor-coalescer", daemon=True)
        self._thread.start()
        self.coalescer = asyncio.run_coroutine_threadsafe(self._make(target, options), self._loop).result()

    @staticmethod
    async def _make(target: str, options: dict[str, Any]) -> RewardCoalescer:
        return RewardCoalescer(target, **options)

    def reward(self, request: reward_pb2.RewardRequest, timeout_s: float | None = None) -> reward_pb2.RewardResult:
        return asyncio.run_coroutine_threadsafe(self.coalescer.reward(request), self._loop).result(timeout_s)


_background: dict[str, BackgroundCoalescer] = {}
_background_lock = threading.Lock()


def background_coalescer(target: str, **options: Any) -> BackgroundCoalescer:
    with _background_lock:
        if target not in _background:
            _background[target] = BackgroundCoalescer(target, **options)
        return _background[target]
