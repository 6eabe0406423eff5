"""Prompt log-probs with top-k through the HTTP front against vLLM's own OpenAI server, same model, same run.

    python -m proctor.bench.http_prompt_logprobs                      # CPU: the tiny model, top-20
    python -m proctor.bench.http_prompt_logprobs --model builtin:smollm2 --sequences 32 --length 512

The workload is TRL's VLLMClient.get_sequence_logprobs: POST /v1/completions {"prompt": [token-id lists],
"max_tokens": 1, "temperature": 1.0, "prompt_logprobs": k}, `--batch` sequences per request, `--concurrency`
requests in flight. proctor answers the prompt log-probs from its fused Score path and samples the one token from the
same pass (the torch backend; vLLM too samples it in its prompt's forward); the `max_tokens: 0` row (scoring only,
which vLLM does not offer) is the baseline beside it: what the token costs is the gap between the two rows. Both
servers run in their own processes on this machine: `proctor serve` (teacher on the torch backend) and
`python -m vllm.entrypoints.openai.api_server` (needs vLLM importable, e.g. CI's .venv-vllm; `--vllm-python` names
another interpreter). Tokens/s = scored prompt tokens (length - 1 per sequence) / wall time. Each row runs
`--rounds` times, the proctor rows in an order that rotates each round (so neither always runs first on a machine
whose load drifts); a row's figure is its median round, and `max_tokens 1 / max_tokens 0` is the median of each
round's ratio. Beside the wall time, which a shared machine's neighbours swing, the proctor rows also count the CPU
seconds the server process spent (its own threads, not its neighbours' work): `server CPU s` and the median
round's ratio of the two rows' CPU seconds. Writes bench/results/YYYY-MM-DD-<device>-<--name>.{json,md}.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import platform
import random
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from proctor.bench.server import cpu_seconds, serve
from proctor.engine.backends.builtin_models import resolve_model

RESULTS = Path(__file__).resolve().parent / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return dict(json.loads(response.read()))


def wait_healthy(url: str, process: subprocess.Popen[bytes] | None, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    raise TimeoutError(f"{url} not healthy within {limit_s:g} s")


def run(
    url: str,
    model: str,
    batches: list[list[list[int]]],
    k: int,
    max_tokens: int,
    concurrency: int,
    pid: int | None = None,
) -> dict[str, float]:
    """Every batch once (after one warm-up request); tokens/s of scored prompt positions, and with `pid` the CPU
    seconds that server process spent on them."""

    def one(batch: list[list[int]]) -> int:
        body = {"model": model, "prompt": batch, "max_tokens": max_tokens, "temperature": 1.0, "prompt_logprobs": k}
        out = post(url + "/v1/completions", body)
        positions = [p for choice in out["choices"] for p in choice["prompt_logprobs"] if p is not None]
        assert all(len(p) >= k for p in positions), "every position carries the top-k"
        return len(positions)

    one(batches[0])
    cpu, start = cpu_seconds(pid) if pid else 0.0, time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        scored = sum(pool.map(one, batches))
    wall = time.perf_counter() - start
    out = {"scored_tokens": scored, "wall_s": round(wall, 3), "tokens_per_s": round(scored / wall, 1)}
    if pid:
        out["server_cpu_s"] = round(cpu_seconds(pid) - cpu, 3)
    return out


def start_vllm(python: str, path: str, name: str, max_len: int, port: int, log: Any) -> subprocess.Popen[bytes]:
    command = [
        python, "-m", "vllm.entrypoints.openai.api_server", "--model", path, "--served-model-name", name,
        "--dtype", "float32", "--max-model-len", str(max_len), "--max-logprobs", "64", "--enforce-eager",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


ROW_ONE = "proctor, max_tokens 1 (as TRL sends)"
ROW_ZERO = "proctor, max_tokens 0 (scoring only)"
ROW_VLLM = "vLLM's OpenAI server, max_tokens 1"


def rotated(names: list[str], round_: int) -> list[str]:
    """Round r runs the rows starting from the r-th."""
    shift = round_ % len(names)
    return names[shift:] + names[:shift]


def summary(rounds: list[dict[str, float]]) -> dict[str, Any]:
    """A row over its rounds: the median round's tokens/s, wall time and server CPU seconds, and every round's."""
    row: dict[str, Any] = {
        "scored_tokens": rounds[0]["scored_tokens"],
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rounds),
        "wall_s": statistics.median(r["wall_s"] for r in rounds),
        "rounds_tokens_per_s": [r["tokens_per_s"] for r in rounds],
    }
    if "server_cpu_s" in rounds[0]:
        row["server_cpu_s"] = statistics.median(r["server_cpu_s"] for r in rounds)
        row["rounds_server_cpu_s"] = [r["server_cpu_s"] for r in rounds]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:tiny")
    p.add_argument("--sequences", type=int, default=64)
    p.add_argument("--length", type=int, default=256, help="tokens per sequence")
    p.add_argument("--batch", type=int, default=8, help="sequences per request")
    p.add_argument("--concurrency", type=int, default=2, help="requests in flight")
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3, help="runs of each row (the proctor rows' order rotates)")
    p.add_argument("--name", default="http-prompt-logprobs", help="what the result files are called after the date")
    p.add_argument("--vllm-python", default=sys.executable, help="an interpreter with vLLM; '' = proctor only")
    args = p.parse_args()

    path = resolve_model(args.model)
    rng = random.Random(0)
    vocab = 500 if args.model == "builtin:tiny" else 32000
    seqs = [[rng.randrange(vocab) for _ in range(args.length)] for _ in range(args.sequences)]
    batches = [seqs[i : i + args.batch] for i in range(0, len(seqs), args.batch)]
    max_len = max(1024, args.length + 16)
    runs: dict[str, list[dict[str, float]]] = {ROW_ONE: [], ROW_ZERO: []}
    max_tokens = {ROW_ONE: 1, ROW_ZERO: 0}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as folder:
        http_port = free_port()
        config = (
            f"server: {{port: 0, metrics_port: -1}}\nhttp: {{port: {http_port}}}\n"
            f"teacher: {{model: '{args.model}', backend: torch, device: cpu, max_top_logprobs: 256}}\n"
        )
        proctor = serve(Path(folder), config)
        try:
            url = f"http://127.0.0.1:{http_port}"
            wait_healthy(url, None, 120)
            for round_ in range(args.rounds):
                for name in rotated(list(runs), round_):
                    runs[name].append(
                        run(url, args.model, batches, args.top_k, max_tokens[name], args.concurrency, proctor.proc.pid)
                    )
        finally:
            proctor.proc.terminate()
            proctor.proc.wait(timeout=60)
        if args.vllm_python:
            port = free_port()
            with open(Path(folder) / "vllm.log", "wb") as log:
                vllm = start_vllm(args.vllm_python, path, args.model, max_len, port, log)
                try:
                    url = f"http://127.0.0.1:{port}"
                    wait_healthy(url, vllm, 900)
                    runs[ROW_VLLM] = [
                        run(url, args.model, batches, args.top_k, 1, args.concurrency) for _ in range(args.rounds)
                    ]
                finally:
                    os.killpg(vllm.pid, signal.SIGTERM)
                    vllm.wait(timeout=60)
    rows = {name: summary(rounds) for name, rounds in runs.items()}
    pairs = list(zip(runs[ROW_ONE], runs[ROW_ZERO], strict=True))
    token_cost = statistics.median(one["tokens_per_s"] / zero["tokens_per_s"] for one, zero in pairs)
    cpu_cost = statistics.median(one["server_cpu_s"] / zero["server_cpu_s"] for one, zero in pairs)
    device = "cpu"
    command = "python -m proctor.bench.http_prompt_logprobs " + shlex.join(sys.argv[1:])
    report = {
        "date": dt.date.today().isoformat(),
        "device": f"{device} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "command": command,
        "workload": {k: v for k, v in vars(args).items() if k not in ("vllm_python", "name")},
        "rows": rows,
        # the median over rounds of (max_tokens 1 tokens/s) / (max_tokens 0 tokens/s): 1.0 = the token is free
        "one_token_over_scoring_only": round(token_cost, 3),
        # the median over rounds of (max_tokens 1 server CPU s) / (max_tokens 0 server CPU s): 1.0 = the token is free
        "one_token_cpu_over_scoring_only": round(cpu_cost, 3),
        # the machine's 1-minute load average around the run: on a shared VM the rows are only as steady as this
        "load_average": [round(x, 1) for x in (load[0], os.getloadavg()[0])],
    }
    anchor = rows.get(ROW_VLLM)
    if anchor:
        report["ratio_to_vllm"] = {
            name: round(r["tokens_per_s"] / anchor["tokens_per_s"], 2) for name, r in rows.items()
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"{report['date']}-{device}-{args.name}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# prompt_logprobs top-{args.top_k} through HTTP: proctor vs vLLM ({device}, {args.model})",
        "",
        f"`{command}` — {args.sequences} sequences of {args.length} tokens, {args.batch} per request, "
        f"{args.concurrency} in flight, {args.rounds} rounds (proctor's rows in rotating order); tokens/s of scored "
        f"prompt positions, the median round, all rows in the same run; load average {load[0]:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after, on {os.cpu_count()} cores.",
        "",
        "| server | tokens/s (median) | rounds | wall s | server CPU s (rounds) | vs vLLM |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        ratio = f"{r['tokens_per_s'] / anchor['tokens_per_s']:.2f}x" if anchor else "-"
        each = ", ".join(f"{x:,.0f}" for x in r["rounds_tokens_per_s"])
        cpu = ", ".join(f"{x:.2f}" for x in r.get("rounds_server_cpu_s", [])) or "-"
        lines.append(f"| {name} | {r['tokens_per_s']:,.0f} | {each} | {r['wall_s']} | {cpu} | {ratio} |")
    lines += [
        "",
        "max_tokens 1 / max_tokens 0, the median of the rounds' ratios: "
        f"tokens/s {token_cost:.3f}, server CPU seconds {cpu_cost:.3f}",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
