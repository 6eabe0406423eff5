"""Prompt log-probs with top-k through the HTTP front against vLLM's own OpenAI server, same model, same run.

    python -m proctor.bench.http_prompt_logprobs                      # CPU: the tiny model, top-20
    python -m proctor.bench.http_prompt_logprobs --model builtin:smollm2 --sequences 32 --length 512

The workload is TRL's VLLMClient.get_sequence_logprobs: POST /v1/completions {"prompt": [token-id lists],
"max_tokens": 1, "temperature": 1.0, "prompt_logprobs": k}, `--batch` sequences per request, `--concurrency`
requests in flight. proctor answers the prompt log-probs from its fused Score path and, for `max_tokens: 1`, runs the
Generate path for the one sampled token as vLLM does; the `max_tokens: 0` row (scoring only, which vLLM does not
offer) shows what a client saves by not asking for that token. Both servers run in their own processes on this
machine: `proctor serve` (teacher on the torch backend) and `python -m vllm.entrypoints.openai.api_server` (needs
vLLM importable, e.g. CI's .venv-vllm; `--vllm-python` names another interpreter). Tokens/s = scored prompt
tokens (length - 1 per sequence) / wall time. Writes bench/results/YYYY-MM-DD-<device>-http-prompt-logprobs.{json,md}.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from proctor.bench.server import serve
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
    url: str, model: str, batches: list[list[list[int]]], k: int, max_tokens: int, concurrency: int
) -> dict[str, float]:
    """Every batch once (after one warm-up request); tokens/s of scored prompt positions."""

    def one(batch: list[list[int]]) -> int:
        body = {"model": model, "prompt": batch, "max_tokens": max_tokens, "temperature": 1.0, "prompt_logprobs": k}
        out = post(url + "/v1/completions", body)
        positions = [p for choice in out["choices"] for p in choice["prompt_logprobs"] if p is not None]
        assert all(len(p) >= k for p in positions), "every position carries the top-k"
        return len(positions)

    one(batches[0])
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        scored = sum(pool.map(one, batches))
    wall = time.perf_counter() - start
    return {"scored_tokens": scored, "wall_s": round(wall, 3), "tokens_per_s": round(scored / wall, 1)}


def start_vllm(python: str, path: str, name: str, max_len: int, port: int, log: Any) -> subprocess.Popen[bytes]:
    command = [
        python, "-m", "vllm.entrypoints.openai.api_server", "--model", path, "--served-model-name", name,
        "--dtype", "float32", "--max-model-len", str(max_len), "--max-logprobs", "64", "--enforce-eager",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:tiny")
    p.add_argument("--sequences", type=int, default=64)
    p.add_argument("--length", type=int, default=256, help="tokens per sequence")
    p.add_argument("--batch", type=int, default=8, help="sequences per request")
    p.add_argument("--concurrency", type=int, default=2, help="requests in flight")
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--vllm-python", default=sys.executable, help="an interpreter with vLLM; '' = proctor only")
    args = p.parse_args()

    path = resolve_model(args.model)
    rng = random.Random(0)
    vocab = 500 if args.model == "builtin:tiny" else 32000
    seqs = [[rng.randrange(vocab) for _ in range(args.length)] for _ in range(args.sequences)]
    batches = [seqs[i : i + args.batch] for i in range(0, len(seqs), args.batch)]
    max_len = max(1024, args.length + 16)
    rows: dict[str, dict[str, float]] = {}
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
            rows["proctor, max_tokens 1 (as TRL sends)"] = run(
                url, args.model, batches, args.top_k, 1, args.concurrency
            )
            rows["proctor, max_tokens 0 (scoring only)"] = run(
                url, args.model, batches, args.top_k, 0, args.concurrency
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
                    rows["vLLM's OpenAI server, max_tokens 1"] = run(
                        url, args.model, batches, args.top_k, 1, args.concurrency
                    )
                finally:
                    os.killpg(vllm.pid, signal.SIGTERM)
                    vllm.wait(timeout=60)
    device = "cpu"
    command = "python -m proctor.bench.http_prompt_logprobs " + " ".join(sys.argv[1:])
    report = {
        "date": dt.date.today().isoformat(),
        "device": f"{device} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "command": command,
        "workload": {k: v for k, v in vars(args).items() if k != "vllm_python"},
        "rows": rows,
        # the machine's 1-minute load average around the run: on a shared VM the rows are only as steady as this
        "load_average": [round(x, 1) for x in (load[0], os.getloadavg()[0])],
    }
    anchor = rows.get("vLLM's OpenAI server, max_tokens 1")
    if anchor:
        report["ratio_to_vllm"] = {
            name: round(r["tokens_per_s"] / anchor["tokens_per_s"], 2) for name, r in rows.items()
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"{report['date']}-{device}-http-prompt-logprobs"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# prompt_logprobs top-{args.top_k} through HTTP: proctor vs vLLM ({device}, {args.model})",
        "",
        f"`{command}` — {args.sequences} sequences of {args.length} tokens, {args.batch} per request, "
        f"{args.concurrency} in flight; tokens/s of scored prompt positions, both servers in the same run; "
        f"load average {load[0]:.1f} before, {os.getloadavg()[0]:.1f} after, on "
        f"{os.cpu_count()} cores.",
        "",
        "| server | tokens/s | wall s | vs vLLM |",
        "|---|---|---|---|",
    ]
    for name, r in rows.items():
        ratio = f"{r['tokens_per_s'] / anchor['tokens_per_s']:.2f}x" if anchor else "-"
        lines.append(f"| {name} | {r['tokens_per_s']:,.0f} | {r['wall_s']} | {ratio} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
