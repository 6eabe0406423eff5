"""The training step T for trainers that cannot send it (verl's reward functions, OpenRLHF's remote reward model).

Atom-Searcher's α = 0.5·(1 − T/T_MAX) needs T, and neither verl's per-sample reward functions nor OpenRLHF's
remote reward POST carry it. A synchronous trainer, though, sends exactly `rollouts_per_step` rollouts (prompts
per step × samples per prompt) in each step, all of them before any of the next step's. So the rollouts of a run
(named by a key the request or the URL carries) are counted as they arrive, and a rollout's T is the number of the
run's rollouts that came before it, divided by rollouts_per_step: T = 0 on the first step, N − 1 on the N-th.

- A step the trainer does send always wins; the counter is then neither read nor moved.
- A run's rollouts_per_step is fixed by its first rollout; a later rollout saying otherwise is an error, not a
  silent restart of the count.
- `observe_only` (validation rollouts) is not counted and takes the T of the run's latest counted rollout (0
  before any): the step the trainer is at, also after its last one.
- With a state directory, each run's count lives in a file there, read and written under an exclusive `flock`
  for every rollout: the count survives a restart of the server, and replicas that share the directory (one host,
  or a volume with working POSIX locks) share one count, so T is exact whichever replica a rollout reaches. Without
  one the count is in this process's memory: exact for one server, lost on restart.
- With a store (a `StepStore`: Redis, engine/stores/redis_steps.py), each run's count lives there, read, checked
  and moved in one atomic step: replicas on several machines share one count. A store that fails fails the item
  (UNAVAILABLE): a rollout is never given a T that was not counted.
- What the count cannot see: a rollout the trainer sends twice (a client retry after the server counted it)
  counts twice, and rollouts of another kind on the same key (an evaluation pass that is not marked
  observe_only) move T forward. Give evaluation its own key or mark it.
"""

from __future__ import annotations

import fcntl
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

from proctor.engine.errors import ItemError

MAX_KEY_CHARS = 200
_RECORD = 48  # bytes of a run's state file: "<count> <rollouts_per_step>", space-padded, newline-terminated


@dataclass(frozen=True)
class StepRun:
    key: str
    rollouts_per_step: int = 0  # 0 = the tracker's default
    observe_only: bool = False


class StepStore(Protocol):
    """A count shared by replicas on several machines, kept outside the process (engine/stores)."""

    def take(self, key: str, per_step: int, observe_only: bool) -> tuple[int, int]:
        """In one atomic step: the run's count before this rollout and its stored rollouts_per_step (0 for a new
        run). Counts the rollout unless observe_only, and records per_step on a new run; with a stored
        rollouts_per_step other than per_step it changes nothing. An unreachable store is an ItemError."""
        ...

    def close(self) -> None: ...


class StepTracker:
    """Counts the rollouts of each run; `step(run)` is the T of the rollout that is arriving now."""

    def __init__(
        self, rollouts_per_step: int = 0, state_dir: str = "", max_runs: int = 1024, store: StepStore | None = None
    ) -> None:
        if rollouts_per_step < 0:
            raise ValueError("rollouts_per_step must be >= 0")
        if state_dir and store is not None:
            raise ValueError("a state directory or a store, not both")
        self.rollouts_per_step = rollouts_per_step
        self.max_runs = max_runs
        self._dir = Path(state_dir) if state_dir else None
        if self._dir is not None:
            self._dir.mkdir(parents=True, exist_ok=True)
        self._store = store
        self._memory: dict[str, list[int]] = {}  # key -> [count, rollouts_per_step], without a state directory
        self._files: dict[str, int] = {}  # key -> open descriptor of its state file
        self._stored: set[str] = set()  # keys this process counted in the store
        self._lock = threading.Lock()  # the HTTP front and the gRPC loop may count on different threads

    @property
    def waits(self) -> bool:
        """Counting may wait on I/O (another replica's file lock, or the network to the store): a caller on an
        event loop counts off it."""
        return self._dir is not None or self._store is not None

    def step(self, run: StepRun) -> int:
        """T of this rollout of `run`; counts it unless observe_only. Errors name the request field at fault."""
        key = run.key
        if not key or len(key) > MAX_KEY_CHARS or not key.isprintable():
            raise ItemError(f"must be 1..{MAX_KEY_CHARS} printable characters, got {key[:MAX_KEY_CHARS]!r}", "run.key")
        per_step = run.rollouts_per_step or self.rollouts_per_step
        if per_step <= 0:
            raise ItemError(
                "required to derive the training step: prompts per step x samples per prompt, in the request "
                "or as reward.steps.rollouts_per_step",
                "run.rollouts_per_step",
            )
        if self._store is not None:
            count = self._count_in_store(self._store, key, per_step, run.observe_only)
        else:
            with self._lock:
                if self._dir is None:
                    count = self._count_in_memory(key, per_step, run.observe_only)
                else:
                    count = self._count_on_disk(key, per_step, run.observe_only)
        if run.observe_only:
            count = max(count - 1, 0)  # the latest counted rollout's
        return count // per_step

    def close(self) -> None:
        with self._lock:
            for fd in self._files.values():
                os.close(fd)
            self._files.clear()
            if self._store is not None:
                self._store.close()

    def _admit(self, known: bool) -> None:
        if not known and len(self._memory) + len(self._files) + len(self._stored) >= self.max_runs:
            raise ItemError(f"this server already tracks {self.max_runs} runs (reward.steps.max_runs)", "run.key")

    def _count_in_store(self, store: StepStore, key: str, per_step: int, observe_only: bool) -> int:
        with self._lock:  # only the admission: the store's own step is atomic, and may wait on the network
            if key not in self._stored:
                self._admit(False)
                self._stored.add(key)
        count, stored_rate = store.take(key, per_step, observe_only)
        if stored_rate:
            _check_same_rate(key, stored_rate, per_step)
        return count

    def _count_in_memory(self, key: str, per_step: int, observe_only: bool) -> int:
        state = self._memory.get(key)
        if state is None:
            self._admit(False)
            state = self._memory[key] = [0, per_step]
        _check_same_rate(key, state[1], per_step)
        count = state[0]
        if not observe_only:
            state[0] = count + 1
        return count

    def _count_on_disk(self, key: str, per_step: int, observe_only: bool) -> int:
        fd = self._files.get(key)
        if fd is None:
            self._admit(False)
            assert self._dir is not None
            # quote() keeps any key a single, reversible file name (no "/", no "..").
            fd = os.open(self._dir / f"{quote(key, safe='')}.step", os.O_RDWR | os.O_CREAT, 0o644)
            self._files[key] = fd
        fcntl.flock(fd, fcntl.LOCK_EX)  # other replicas on the same directory wait here
        try:
            count, stored_rate = _parse(os.pread(fd, _RECORD, 0), key)
            if stored_rate:
                _check_same_rate(key, stored_rate, per_step)
            if not observe_only or not stored_rate:
                written = count if observe_only else count + 1
                os.pwrite(fd, f"{written} {per_step}".ljust(_RECORD - 1).encode() + b"\n", 0)
            return count
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


def _parse(record: bytes, key: str) -> tuple[int, int]:
    if not record:
        return 0, 0
    try:
        count, rate = (int(v) for v in record.split())
    except ValueError:
        raise ItemError(
            f"the state file of run {key!r} is damaged: {record[:_RECORD]!r}", "run.key", "INTERNAL"
        ) from None
    return count, rate


def _check_same_rate(key: str, known: int, asked: int) -> None:
    if known != asked:
        raise ItemError(
            f"run {key!r} counts {known} rollouts per step, this rollout says {asked}; use a new key for a new run",
            "run.rollouts_per_step",
        )
