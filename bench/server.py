"""A `proctor serve` in its own process, as in production, for the benchmarks that drive it over gRPC."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path


def serve(folder: Path, config_text: str) -> tuple[subprocess.Popen[str], str]:
    """`proctor serve` in its own process (as in production); returns it and its address once it is ready."""
    config = folder / "proctor.yaml"
    config.write_text(config_text)
    proc = subprocess.Popen(
        [sys.executable, "-m", "proctor.engine.cli", "--log-level", "WARNING", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    port = ""
    for line in proc.stdout:
        found = re.search(r"listening on [\d.]+:(\d+)", line)
        port = found.group(1) if found else port
        if "proctor: ready" in line:
            break
        if "proctor: failed to load" in line:
            proc.terminate()
            raise RuntimeError(line.strip())
    else:
        raise RuntimeError(f"proctor serve exited with {proc.wait()} before it was ready")
    # Keep reading: a full pipe would block the server (and vLLM's engine process, which logs to stdout too).
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return proc, f"127.0.0.1:{port}"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
