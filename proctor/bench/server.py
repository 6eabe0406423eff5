"""A `proctor serve` in its own process, as in production, for the benchmarks that drive it over gRPC."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import NamedTuple


class Served(NamedTuple):
    proc: subprocess.Popen[str]
    target: str  # host:port of its gRPC
    metrics: str  # its /metrics URL, "" when off


def serve(folder: Path, config_text: str) -> Served:
    """`proctor serve` in its own process (as in production), once it is ready. Its warnings and errors go to
    `folder`/server.log; a server that fails to start says why from there."""
    config = folder / "proctor.yaml"
    config.write_text(config_text)
    log = folder / "server.log"
    with open(log, "w") as stderr:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "proctor.engine.cli", "--log-level", "WARNING", "serve", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
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


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU time so far (Linux) of a process, or of one of its threads (a process's main thread, where
    asyncio's loop runs, has the process's id)."""
    stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
