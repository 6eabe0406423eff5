"""A `proctor serve` in its own process, as in production, for the benchmarks that drive it over gRPC."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple


class Served(NamedTuple):
    proc: subprocess.Popen[str]
    target: str  # host:port of its gRPC
    metrics: str  # its /metrics URL, "" when off


def serve(
    folder: Path,
    config_text: str,
    env: dict[str, str] | None = None,
    cores: list[int] | None = None,
    cwd: Path | None = None,
) -> Served:
    """`proctor serve` in its own process (as in production), once it is ready. Its warnings and errors go to
    `folder`/server.log; a server that fails to start says why from there. `env`: its environment (default: this
    one's); `cores`: the CPUs it may run on (default: this process's); `cwd`: where it runs (default: here; `-m`
    puts it first on the import path, ahead of PYTHONPATH)."""
    config = folder / "proctor.yaml"
    config.write_text(config_text)
    log = folder / "server.log"
    with open(log, "w") as stderr:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "proctor.engine.cli", "--log-level", "WARNING", "serve", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
            cwd=cwd,
            preexec_fn=pinned_to(cores),
        )
    assert proc.stdout is not None
    port = metrics = ""
    for line in proc.stdout:
        found = re.search(r"listening on [\d.]+:(\d+).*metrics: (\S+?)\)", line)
        if found:
            port, metrics = found.group(1), found.group(2).replace("off", "")
        if "proctor: ready" in line:
            break
        if "proctor: failed to load" in line:
            proc.terminate()
            raise RuntimeError(f"{line.strip()}; the end of {log}:\n{_tail(log)}")
    else:
        raise RuntimeError(
            f"proctor serve exited with {proc.wait()} before it was ready; the end of {log}:\n{_tail(log)}"
        )
    # Keep reading: a full pipe would block the server (and vLLM's engine process, which logs to stdout too).
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return Served(proc, f"127.0.0.1:{port}", metrics)


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def scrape(metrics_url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        return str(response.read().decode())


def peak_in(metrics_text: str) -> float | None:
    """The largest proctor_gpu_memory_peak_bytes over the devices; None without CUDA (no such gauge)."""
    pattern = r"^proctor_gpu_memory_peak_bytes\{[^}]*\} (\S+)$"
    values = [float(m.group(1)) for m in re.finditer(pattern, metrics_text, re.M)]
    return max(values) if values else None


def histogram_totals(metrics_text: str, name: str) -> tuple[float, float]:
    """A histogram's sum and count, added over its label sets."""
    total = {"sum": 0.0, "count": 0.0}
    for m in re.finditer(rf"^{name}_(sum|count)(?:\{{[^}}]*\}})? (\S+)$", metrics_text, re.M):
        total[m.group(1)] += float(m.group(2))
    return total["sum"], total["count"]


def _stat(path: str) -> list[str]:
    """A /proc .../stat file's fields after the command name (state first)."""
    return Path(path).read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU time so far (Linux) of a process, or of one of its threads (a process's main thread, where
    asyncio's loop runs, has the process's id)."""
    fields = _stat(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> dict[str, float]:
    """`cpu_seconds` of a process and of each of its live descendants, by "name pid" (vLLM's server runs its engine
    core and worker as children; a child that exits takes its time with it)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):  # gone meanwhile
                children.setdefault(int(_stat(f"{entry}/stat")[1]), []).append(int(entry.name))
    out, todo = {}, [pid]
    while todo:
        at = todo.pop()
        with contextlib.suppress(OSError):
            out[f"{Path(f'/proc/{at}/comm').read_text().strip()} {at}"] = cpu_seconds(at)
        todo.extend(children.get(at, []))
    return out


def parse_cores(spec: str) -> list[int]:
    """CPU ids from a list like "0-1" or "0,2-3"; "" = every CPU this process may run on."""
    if not spec:
        return sorted(os.sched_getaffinity(0))
    cores: list[int] = []
    for part in spec.split(","):
        first, _, last = part.partition("-")
        cores.extend(range(int(first), int(last or first) + 1))
    return cores


def pinned_to(cores: list[int] | None) -> Callable[[], None] | None:
    """A Popen preexec_fn confining the child (and what it starts) to `cores`; None leaves it as this process."""
    if cores is None:
        return None
    return functools.partial(os.sched_setaffinity, 0, cores)


def omp_bound(cores: list[int]) -> dict[str, str]:
    """The OpenMP environment vLLM's CPU backend gives its worker for a core list (vllm/utils/ompmultiprocessing.py,
    libgomp without LD_PRELOAD): a thread per core, bound to the list's cores."""
    return {
        "OMP_NUM_THREADS": str(len(cores)),
        "OMP_PLACES": "{" + ",".join(map(str, cores)) + "}",
        "OMP_PROC_BIND": "true",
    }
