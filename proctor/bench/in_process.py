"""The Teacher's core in the benchmark's own process, built and driven the way `proctor serve` and its gRPC door build
and drive it, so that a comparison with a call over gRPC differs by the door alone.

Built: from the same config, by the server's own `build_cores` over a `BackendSet`, its backend loaded, then
`gc.freeze()` as the server does once its models are loaded. Run: under the server's GIL switch interval
(`server.switch_interval_ms`, which `proctor serve` sets for its process), on one event loop. Driven: item by item
in arrival order, each checked as the door's handler has the core check it (`check_top`, `check_group`,
`score_inputs`), holding a slot of the service's queue (`admitted`) and running as its own task, with at most
`stream_window` items in flight, as one stream holds them. What a gRPC call adds on top is the door: request
decoding and conversion, the stream's machinery, result building and encoding, the transport, and the client.

It runs in a process of its own, started as a server is (`Worker`, `python -m proctor.bench.in_process`), so that
the benchmark can start a fresh one beside each fresh server.
"""

from __future__ import annotations

import asyncio
import gc
import random
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from prometheus_client import generate_latest

from proctor.bench.server import histogram_totals
from proctor.engine.config import Config, load_config
from proctor.engine.cores.context import Lifecycle
from proctor.engine.cores.metrics import Metrics
from proctor.engine.cores.teacher import PromptInput, TeacherCore
from proctor.engine.server.cores import build_cores
from proctor.engine.server.wiring import BackendSet


class ScoreCall(NamedTuple):
    """One Score item as a Python caller holds it."""

    context: list[int]
    target: list[int]
    top_logprobs: int


def score_shapes(items: int) -> list[tuple[list[int], list[int]]]:
    """The benchmark's Score items, (context ids, target ids) of 32 tokens each; the same on every call."""
    rng = random.Random(1)
    return [([rng.randint(3, 400) for _ in range(32)], [rng.randint(3, 400) for _ in range(32)]) for _ in range(items)]


class InProcessTeacher:
    """`config`'s Teacher, without its server: its core on its own event loop in this process."""

    def __init__(self, config: Config) -> None:
        if config.teacher is None:
            raise ValueError("teacher: the config hosts no Teacher")
        self._switch_interval_s = config.server.switch_interval_ms / 1000
        self.metrics = Metrics()
        backends = BackendSet(self.metrics)
        only_teacher = Config(server=config.server, teacher=config.teacher)
        core = build_cores(only_teacher, backends, self.metrics, Lifecycle()).teacher
        assert core is not None
        self.core: TeacherCore = core
        self._backends = list(backends.all.values())
        self._loop = asyncio.Runner()
        for backend in self._backends:
            self._loop.run(backend.start())
        gc.freeze()

    def score(self, calls: list[ScoreCall]) -> int:
        """The calls scored; how many were. Each result is dropped once its item is done, as the server drops it once
        the door has it: thousands of results held at once (top-k rows are Python lists) made the collector walk
        them all again and again, a cost of this harness that a server does not pay."""
        with self._server_switch_interval():
            return self._loop.run(self._score(calls))

    async def _score(self, calls: list[ScoreCall]) -> int:
        core, svc = self.core, self.core.svc
        window = asyncio.Semaphore(svc.stream_window)

        async def one(call: ScoreCall) -> None:
            try:
                core.check_top(call.top_logprobs, "top_logprobs")
                core.check_group(0, has_target=True)
                context = PromptInput(ids=call.context, field="context", ids_field="context.token_ids.ids")
                target = PromptInput(ids=call.target, field="target", ids_field="target.token_ids.ids")
                context_ids, (target_ids,) = core.score_inputs(context, [target])
                with svc.admitted(1):
                    await core.score(context_ids, target_ids, call.top_logprobs)
            finally:
                window.release()

        tasks = []
        for call in calls:
            await window.acquire()
            tasks.append(asyncio.create_task(one(call)))
        return len(await asyncio.gather(*tasks))

    @contextmanager
    def _server_switch_interval(self) -> Iterator[None]:
        """The server's interval while the core runs; this process's own (the client's) otherwise."""
        own = sys.getswitchinterval()
        if self._switch_interval_s:
            sys.setswitchinterval(self._switch_interval_s)
        try:
            yield
        finally:
            sys.setswitchinterval(own)

    def metrics_text(self) -> str:
        """Its metrics, as the server's /metrics shows them (the backend's batch sizes among them)."""
        return generate_latest(self.metrics.registry).decode()

    def close(self) -> None:
        for backend in self._backends:
            self._loop.run(backend.close())
        self._loop.close()


class Worker:
    """An `InProcessTeacher` in a process of its own that scores `score_shapes(items)` at a top-k on each request:
    its work and CPU are that process's, as a server's are its own."""

    def __init__(self, config: Path, items: int, tops: tuple[int, ...]) -> None:
        self.items = items
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proctor.bench.in_process", str(config), str(items), *map(str, tops)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # what loading the model prints comes first
            if line.strip() == "ready":
                break
        else:
            raise RuntimeError(f"the in-process worker exited with {self.proc.wait()} before it was ready")

    def _ask(self, command: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def score(self, top: int) -> None:
        answer = self._ask(f"score {top}")
        if answer != f"scored {self.items}":
            raise RuntimeError(f"the in-process worker answered {answer!r}")

    def histogram_totals(self, name: str) -> tuple[float, float]:
        """The sum and count of one of its histograms (the backend's batch sizes, say)."""
        total, count = self._ask(f"totals {name}").split()
        return float(total), float(count)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # the worker ends at the end of its input
        self.proc.wait()


def _serve_commands(config: Path, items: int, tops: list[int]) -> None:
    """The worker's side: `score TOP` scores every item at that top-k; `totals NAME` answers a histogram's sum and
    count."""
    # Built before the teacher, so that its gc.freeze() takes them: a server holds no such list.
    calls = {top: [ScoreCall(c, t, top) for c, t in score_shapes(items)] for top in tops}
    teacher = InProcessTeacher(load_config(config))
    print("ready", flush=True)
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "score":
            print(f"scored {teacher.score(calls[int(argument)])}", flush=True)
        elif command == "totals":
            print(*histogram_totals(teacher.metrics_text(), argument), flush=True)
    teacher.close()


if __name__ == "__main__":
    _serve_commands(Path(sys.argv[1]), int(sys.argv[2]), [int(t) for t in sys.argv[3:]])
