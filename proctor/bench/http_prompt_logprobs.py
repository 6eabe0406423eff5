"""Prompt log-probs with top-k through the HTTP front against vLLM's own OpenAI server, same model, same cores,
same run.

    python -m proctor.bench.http_prompt_logprobs                      # CPU: the tiny model, top-20
    python -m proctor.bench.http_prompt_logprobs --model builtin:smollm2 --sequences 48 --vllm-python PY

The workload is TRL's VLLMClient.get_sequence_logprobs: POST /v1/completions {"prompt": [token-id lists],
"max_tokens": 1, "temperature": 1.0, "prompt_logprobs": k}, `--batch` sequences per request, `--concurrency`
requests in flight; every position after the first is scored on both sides. proctor answers the prompt log-probs
from its fused Score path and samples the one token from the same pass (the torch backend; vLLM too samples it in
its prompt's forward); the `max_tokens: 0` row (scoring only, which vLLM refuses) is the baseline beside it: what
the token costs is the gap between the two rows (`max_tokens 1 / max_tokens 0`, the median of the rounds' ratios).

Both servers run in their own processes, started once and kept for every round: `proctor serve` (teacher on the
torch backend) and `python -m vllm.entrypoints.openai.api_server` (`--vllm-python` names an interpreter with vLLM,
e.g. CI's .venv-vllm; '' runs proctor alone). Equal cores: both process trees are confined to `--cores`, vLLM's
worker threads get them through `VLLM_CPU_OMP_THREADS_BIND` (its default binding keeps one core back for its
scheduler) and proctor's the same OpenMP environment vLLM gives its worker (`omp_bound`). Each round runs every
row once, the rows' order rotating from round to round; before a round the machine's 1-minute load average is
noted, and while it is above `--quiet-load` the round waits (up to `--quiet-wait` s) for quiet. A row records its
wall time and the CPU seconds of each server's process tree (/proc utime + stime, children included): scored
tokens/s and scored tokens per server CPU-second, each as a ratio to vLLM's row of the same round. The largest
difference of a log-prob both servers return (a position's token and its top-k, matched by id) is measured on the
warm-up request; `--float64` also holds every row's warm-up answer to the model's own log-probs in float64
(transformers, in this process). `--baseline DIR` serves another checkout's proctor beside them (the same cores and
environment, its `max_tokens: 0` row): a change's before, in the same run. At each round's end the GEMM floor
(`gemm_floor`: the model's own float32 products for the whole workload, nothing else) runs on the same cores with
proctor's environment: each row's wall time is also given as a multiple of it, and so is the wall time a target of
`--target` x vLLM's throughput allows, which says whether the target is within what this machine's matrix
multiplies can do at all. Writes
bench/results/YYYY-MM-DD-<device>-<--name>.{json,md} (`--out` another folder).
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
from typing import Any, NamedTuple

from proctor.bench.gemm_floor import workload_arguments
from proctor.bench.server import omp_bound, parse_cores, pinned_to, serve, tree_cpu_seconds
from proctor.engine.backends.builtin_models import resolve_model

RESULTS = Path(__file__).resolve().parent / "results"
ROW_ONE = "proctor, max_tokens 1 (as TRL sends)"
ROW_ZERO = "proctor, max_tokens 0 (scoring only)"
VLLM_ROW = "vLLM's OpenAI server, max_tokens 1"


class Server(NamedTuple):
    name: str
    url: str
    pid: int


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


def prompt_logprobs(url: str, model: str, batch: list[list[int]], k: int, max_tokens: int) -> list[list[Any]]:
    """Each sequence's prompt_logprobs (None at position 0, then {token id: {logprob, rank, ...}})."""
    body = {"model": model, "prompt": batch, "max_tokens": max_tokens, "temperature": 1.0, "prompt_logprobs": k}
    out = post(url + "/v1/completions", body)
    return [choice["prompt_logprobs"] for choice in sorted(out["choices"], key=lambda c: c["index"])]


def run(
    server: Server,
    servers: list[Server],
    batches: list[list[list[int]]],
    k: int,
    max_tokens: int,
    concurrency: int,
    model: str,
) -> dict[str, Any]:
    """Every batch once through `server`: wall time, scored positions, and every server's CPU seconds meanwhile
    (the idle one's shows what it costs to keep it up)."""

    def one(batch: list[list[int]]) -> int:
        positions = [p for seq in prompt_logprobs(server.url, model, batch, k, max_tokens) for p in seq if p]
        assert all(len(p) >= k for p in positions), "every position carries the top-k"
        return len(positions)

    cpu0 = {s.name: tree_cpu_seconds(s.pid) for s in servers}
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        scored = sum(pool.map(one, batches))
    wall = time.perf_counter() - start
    after = {s.name: tree_cpu_seconds(s.pid) for s in servers}
    spent = {name: {k: v - cpu0[name].get(k, 0.0) for k, v in tree.items()} for name, tree in after.items()}
    own = sum(spent[server.name].values())
    return {
        "scored_tokens": scored,
        "wall_s": round(wall, 3),
        "server_cpu_s": round(own, 2),
        "tokens_per_s": round(scored / wall, 1),
        "tokens_per_cpu_s": round(scored / own, 1),
        "cpu_s_by_server": {name: round(sum(tree.values()), 2) for name, tree in spent.items()},
        "cpu_s_by_process": {key: round(value, 2) for key, value in spent[server.name].items()},
    }


def max_logprob_diff(a: list[list[Any]], b: list[list[Any]]) -> tuple[float, int]:
    """(largest |difference| of a log-prob both answers hold for the same position and token id, how many were
    compared)."""
    worst, compared = 0.0, 0
    for seq_a, seq_b in zip(a, b, strict=True):
        for pos_a, pos_b in zip(seq_a, seq_b, strict=True):
            for token in (pos_a or {}).keys() & (pos_b or {}).keys():
                worst = max(worst, abs(pos_a[token]["logprob"] - pos_b[token]["logprob"]))
                compared += 1
    return worst, compared


def float64_diffs(path: str, batch: list[list[int]], answers: dict[str, list[list[Any]]]) -> dict[str, float]:
    """Per answer (a row's prompt_logprobs for `batch`), the largest |difference| of a log-prob it holds from the
    model's own in float64 (transformers, here): how far each server is from the ground truth."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64).eval()
    worst = dict.fromkeys(answers, 0.0)
    with torch.inference_mode():
        for i, ids in enumerate(batch):
            truth = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1], dim=-1)
            for name, answer in answers.items():
                for at, position in enumerate(answer[i][1:]):
                    for token, entry in position.items():
                        worst[name] = max(worst[name], abs(entry["logprob"] - float(truth[at, int(token)])))
    return worst


def quiet(threshold: float, limit_s: float) -> tuple[float, float]:
    """(the 1-minute load average when the round starts, seconds waited for it to drop to `threshold`)."""
    waited = 0.0
    while os.getloadavg()[0] > threshold and waited < limit_s:
        time.sleep(10)
        waited += 10
    return round(os.getloadavg()[0], 2), waited


def start_vllm(
    python: str, path: str, name: str, max_len: int, port: int, log: Any, cores: list[int]
) -> subprocess.Popen[bytes]:
    command = [
        python, "-m", "vllm.entrypoints.openai.api_server", "--model", path, "--served-model-name", name,
        "--dtype", "float32", "--max-model-len", str(max_len), "--max-logprobs", "64", "--enforce-eager",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cores)),  # every core to the worker's threads
    }
    return subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=pinned_to(cores)
    )


def gemm_floor(args: argparse.Namespace, env: dict[str, str], cores: list[int]) -> dict[str, Any]:
    """`gemm_floor` for this run's workload, in its own process on the servers' cores and environment."""
    command = [sys.executable, "-m", "proctor.bench.gemm_floor", "--model", args.model, "--repeats", "2"]
    command += ["--sequences", str(args.sequences), "--length", str(args.length), "--batch", str(args.batch)]
    done = subprocess.run(
        command, env=env, preexec_fn=pinned_to(cores), capture_output=True, text=True, check=False, timeout=1800
    )
    if done.returncode:
        raise RuntimeError(f"the GEMM floor failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def commit_of(checkout: Path) -> str:
    """The checkout's commit, short, as its row's name says it."""
    out = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or checkout.name


def summary(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per row: medians and per-round values, and where vLLM ran, the ratios to its row of the same round."""
    out: dict[str, dict[str, Any]] = {}
    for name in rounds[0]:
        rows = [r[name] for r in rounds]
        keys = ("wall_s", "server_cpu_s", "tokens_per_s", "tokens_per_cpu_s")
        entry: dict[str, Any] = {f"median_{key}": statistics.median(r[key] for r in rows) for key in keys}
        if VLLM_ROW in rounds[0]:
            for key, label in (("tokens_per_s", "per_wall_s"), ("tokens_per_cpu_s", "per_cpu_s")):
                ratios = [r[name][key] / r[VLLM_ROW][key] for r in rounds]
                entry[f"vs_vllm_{label}"] = [round(x, 2) for x in ratios]
                entry[f"median_vs_vllm_{label}"] = round(statistics.median(ratios), 2)
        out[name] = entry
    return out


def floor_summary(rounds: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """Each row's wall time over the same round's GEMM floor, and the wall time `target` x vLLM's throughput allows
    over it (below 1.0: faster than this machine's float32 products alone)."""
    floors = [r["gemm_floor"]["seconds"] for r in rounds]
    out: dict[str, Any] = {
        "seconds": floors,
        "gflop": rounds[0]["gemm_floor"]["gflop"],
        "gflop_per_s": [r["gemm_floor"]["gflop_per_s"] for r in rounds],
        "wall_over_floor": {
            name: [round(r["rows"][name]["wall_s"] / f, 2) for r, f in zip(rounds, floors, strict=True)]
            for name in rounds[0]["rows"]
        },
    }
    if VLLM_ROW in rounds[0]["rows"]:
        out["target"] = target
        out["target_wall_over_floor"] = [
            round(r["rows"][VLLM_ROW]["wall_s"] / target / f, 2) for r, f in zip(rounds, floors, strict=True)
        ]
    return out


def report_lines(report: dict[str, Any], args: argparse.Namespace) -> list[str]:
    cores = report["cores"]
    lines = [
        f"# prompt_logprobs top-{args.top_k} through HTTP: proctor vs vLLM ({report['device']}, {args.model})",
        "",
        f"`{report['command']}` ({report['date']}) — {args.sequences} sequences of {args.length} tokens "
        f"({args.length - 1} scored each), {args.batch} per request, {args.concurrency} in flight; both servers up "
        f"for the whole run, each confined to cores {cores['cpus']} ({cores['proctor']}; {cores['vllm']}); "
        f"{args.rounds} rounds, the rows' order rotating. Per round: wall s / server CPU s (its process tree) / "
        "1-minute load average at the round's start.",
        "",
    ]
    names = list(report["summary"])
    lines += [
        "| round | load | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for i, r in enumerate(report["rounds"]):
        cells = [f"{r['rows'][n]['wall_s']:.1f} / {r['rows'][n]['server_cpu_s']:.1f}" for n in names]
        lines.append(f"| {i + 1} ({', '.join(r['order_short'])}) | {r['load']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| row | tokens/s | tokens per CPU-s | vs vLLM per wall s | vs vLLM per CPU-s |",
        "|---|---|---|---|---|",
    ]
    for name, s in report["summary"].items():
        wall = s.get("vs_vllm_per_wall_s")
        cpu = s.get("vs_vllm_per_cpu_s")
        lines.append(
            f"| {name} | {s['median_tokens_per_s']:,.0f} | {s['median_tokens_per_cpu_s']:,.0f} | "
            f"{_ratios(wall)} | {_ratios(cpu)} |"
        )
    lines += [
        "",
        "max_tokens 1 / max_tokens 0 (proctor), the median of the rounds' ratios: tokens/s "
        f"{report['one_token_over_scoring_only']:.3f}, "
        f"server CPU seconds {report['one_token_cpu_over_scoring_only']:.3f}.",
    ]
    floor = report["gemm_floor"]
    lines += [
        "",
        f"**The GEMM floor** (`python -m proctor.bench.gemm_floor`, the model's own float32 products for the whole "
        f"workload and nothing else, {floor['gflop']:,.1f} GFLOP, run at each round's end on the same cores): "
        + ", ".join(f"{s:.2f} s ({g:.0f} GFLOP/s)" for s, g in zip(floor["seconds"], floor["gflop_per_s"], strict=True))
        + ". Wall time over it, per round: "
        + "; ".join(
            f"{name} {', '.join(f'{v:.2f}' for v in values)}" for name, values in floor["wall_over_floor"].items()
        )
        + ".",
    ]
    if "target_wall_over_floor" in floor:
        lines += [
            "",
            f"{floor['target']:g}x vLLM's throughput would need a wall time of "
            + ", ".join(f"{v:.2f}" for v in floor["target_wall_over_floor"])
            + " x the GEMM floor (per round; below 1.00 = faster than the machine's float32 products alone).",
        ]
    if "max_abs_logprob_diff" in report:
        lines += [
            "",
            f"Largest |difference| of a log-prob both servers returned (warm-up request, {report['compared']:,} "
            f"position-token pairs matched by id): {report['max_abs_logprob_diff']:.1e}.",
        ]
    if "max_abs_diff_from_float64" in report:
        lines += [
            "",
            "Largest |difference| from the model's own log-probs in float64 (transformers), warm-up request: "
            + "; ".join(f"{name} {value:.1e}" for name, value in report["max_abs_diff_from_float64"].items())
            + ".",
        ]
    return lines


def _ratios(values: list[float] | None) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f}x ({', '.join(f'{v:.2f}' for v in values)})"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    workload_arguments(p, "request")
    p.add_argument("--concurrency", type=int, default=2, help="requests in flight")
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cores", default="", help="CPUs both servers get, e.g. 0-1 (default: all this process may use)")
    p.add_argument("--quiet-load", type=float, default=2.5, help="a round waits while the load average is above")
    p.add_argument("--quiet-wait", type=float, default=180, help="the longest a round waits for quiet, s")
    p.add_argument("--vllm-python", default=sys.executable, help="an interpreter with vLLM; '' = proctor only")
    p.add_argument("--baseline", type=Path, help="another checkout whose proctor serves beside (a change's before)")
    p.add_argument("--target", type=float, default=1.5, help="a throughput goal, x vLLM's (read against the floor)")
    p.add_argument("--float64", action="store_true", help="hold the warm-up answers to the model in float64 too")
    p.add_argument("--name", default="http-prompt-logprobs", help="what the result files are called after the date")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    path = resolve_model(args.model)
    cores = parse_cores(args.cores)
    rng = random.Random(0)
    vocab = 500 if args.model == "builtin:tiny" else 32000
    seqs = [[rng.randrange(vocab) for _ in range(args.length)] for _ in range(args.sequences)]
    batches = [seqs[i : i + args.batch] for i in range(0, len(seqs), args.batch)]
    max_len = max(1024, args.length + 16)
    proctor_env = {**os.environ, **omp_bound(cores)}
    checkouts = {"proctor": proctor_env}
    if args.baseline:  # its proctor package first on the path
        checkouts[f"proctor at {commit_of(args.baseline)}"] = {
            **proctor_env,
            "PYTHONPATH": str(args.baseline.resolve()),
        }
    with tempfile.TemporaryDirectory() as folder, open(Path(folder) / "vllm.log", "wb") as log:
        procs: list[subprocess.Popen[Any]] = []
        vllm = None
        try:
            servers = []
            for name, env in checkouts.items():
                http_port = free_port()
                config = (
                    f"server: {{port: 0, metrics_port: -1}}\nhttp: {{port: {http_port}}}\n"
                    f"teacher: {{model: '{args.model}', backend: torch, device: cpu, max_top_logprobs: 256}}\n"
                )
                here = Path(folder) / name
                here.mkdir()
                procs.append(serve(here, config, env=env, cores=cores, cwd=here).proc)  # its PYTHONPATH decides
                servers.append(Server(name, f"http://127.0.0.1:{http_port}", procs[-1].pid))
                wait_healthy(servers[-1].url, None, 120)
            rows = {ROW_ONE: (servers[0], 1), ROW_ZERO: (servers[0], 0)}
            if args.baseline:
                rows[f"{servers[1].name} (the baseline), max_tokens 0"] = (servers[1], 0)
            if args.vllm_python:
                port = free_port()
                vllm = start_vllm(args.vllm_python, path, args.model, max_len, port, log, cores)
                servers.append(Server("vLLM", f"http://127.0.0.1:{port}", vllm.pid))
                wait_healthy(servers[-1].url, vllm, 900)
                rows[VLLM_ROW] = (servers[-1], 1)
            # the warm-up: every row's path answers the first batch once; proctor's and vLLM's answers compared
            answers = {
                name: prompt_logprobs(server.url, args.model, batches[0], args.top_k, max_tokens)
                for name, (server, max_tokens) in rows.items()
            }
            diff = max_logprob_diff(answers[ROW_ONE], answers[VLLM_ROW]) if VLLM_ROW in answers else None
            truth = float64_diffs(path, batches[0], answers) if args.float64 else None
            names = list(rows)
            rounds: list[dict[str, Any]] = []
            for r in range(args.rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                load, waited = quiet(args.quiet_load, args.quiet_wait)
                done = {
                    name: run(rows[name][0], servers, batches, args.top_k, rows[name][1], args.concurrency, args.model)
                    for name in order
                }
                rounds.append(
                    {
                        "order": order,
                        "order_short": [f"{names.index(n) + 1}" for n in order],
                        "load": load,
                        "waited_s": waited,
                        "load_after": round(os.getloadavg()[0], 2),
                        "rows": {name: done[name] for name in names},
                        "gemm_floor": gemm_floor(args, proctor_env, cores),
                    }
                )
                print(json.dumps(rounds[-1]), flush=True)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=60)
            if vllm is not None:
                os.killpg(vllm.pid, signal.SIGTERM)
                vllm.wait(timeout=60)
    device = "cpu"
    cpus = ",".join(map(str, cores))
    report: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "device": f"{device} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "command": "python -m proctor.bench.http_prompt_logprobs " + shlex.join(sys.argv[1:] if argv is None else argv),
        "workload": {k: v for k, v in vars(args).items() if k not in ("vllm_python", "out", "baseline", "name")},
        "cores": {
            "cpus": cpus,
            "proctor": f"proctor: OMP_NUM_THREADS={len(cores)}, OMP_PLACES={{{cpus}}}, OMP_PROC_BIND=true",
            "vllm": f"vLLM: VLLM_CPU_OMP_THREADS_BIND={cpus}" if args.vllm_python else "vLLM not run",
        },
        "rows_in_order": {str(i + 1): n for i, n in enumerate(names)},
        "rounds": rounds,
        "summary": summary([r["rows"] for r in rounds]),
        "gemm_floor": floor_summary(rounds, args.target),
    }
    if diff is not None:
        report["max_abs_logprob_diff"], report["compared"] = diff
    if truth is not None:
        report["max_abs_diff_from_float64"] = truth
    for key, label in (
        ("tokens_per_s", "one_token_over_scoring_only"),
        ("server_cpu_s", "one_token_cpu_over_scoring_only"),
    ):
        # the median over rounds of (max_tokens 1) / (max_tokens 0): 1.0 = the token is free
        pairs = [(r["rows"][ROW_ONE][key], r["rows"][ROW_ZERO][key]) for r in rounds]
        report[label] = round(statistics.median(one / zero for one, zero in pairs), 3)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{report['date']}-{device}-{args.name}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = report_lines(report, args)
    lines += ["", "Rows: " + "; ".join(f"{i + 1} = {n}" for i, n in enumerate(names)) + "."]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
