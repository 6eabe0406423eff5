"""Hostile input and hard faults against real servers, measured: nothing may freeze them, grow without bound, or
hurt the other clients (issues 22 and 31).

    python -m proctor.bench.hostile [--check] [--out DIR]

Starts `proctor serve` as a process on 127.0.0.1 (a rules-only RewardModel and the tiny Teacher, a 256 KiB message
limit, 16 concurrent calls, a window of 64) for the first cases, then a second one at the default limits (a 16 MiB
message, a 16 MiB HTTP body, reward.max_rollout_chars 1 Mi) with the HTTP front on, for the largest inputs those
admit: each rollout shape at full size over gRPC and over OpenRLHF's /reward, a 16 MiB batch of them, and rollouts
over the limit. Each case runs while Health is probed every 10 ms and an innocent client makes one small Reward
call every 50 ms, and the server's RSS is sampled. Per case: what the attacker got, Health latency p50 / p99 / max,
RSS before / peak / after, and what the innocent client saw. `--check` exits 1 when a Health p99 passes 100 ms, a
Health max 250 ms, or the RSS after a case stays 200 MB over its start. Bounded: ~3 minutes on 2 cores.
Writes bench/results/YYYY-MM-DD-cpu-hostile.{json,md} (or into --out).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from proctor.v1 import common_pb2, reward_pb2, reward_pb2_grpc, teacher_pb2, teacher_pb2_grpc

RESULTS = Path(__file__).resolve().parent / "results"
LIMIT = 256 * 1024  # the server's max_message_bytes in this run
CONFIG = f"""
server: {{port: 0, metrics_port: -1, max_message_bytes: {LIMIT}, max_concurrent_calls: 16, drain_grace_s: 2}}
teacher: {{model: builtin:tiny, device: cpu, limits: {{stream_window: 64}}}}
reward: {{model: '', mode: rules, total_steps: 1000, limits: {{stream_window: 64}}}}
"""
# The defaults, but for the HTTP front (off by default) and rules-only rewards.
DEFAULTS_CONFIG = """
server: {port: 0, metrics_port: -1, drain_grace_s: 2}
http: {port: 0}
reward: {model: '', mode: rules, total_steps: 1000}
"""
MiB = 1024 * 1024
MAX_ROLLOUT_CHARS = MiB  # reward.max_rollout_chars's default: the question, response and golds together
HEALTH_P99_MS = 100.0
HEALTH_MAX_MS = 250.0
RSS_GROWTH_MB = 200.0


def _reward(item_id: str, response: str) -> reward_pb2.RewardRequest:
    return reward_pb2.RewardRequest(id=item_id, response=response, gold_answers=["paris"], training_step=1)


def _codes(results: list[Any]) -> dict[str, int]:
    names = {c.value[0]: c.name for c in grpc.StatusCode}
    seen: dict[str, int] = {}
    for r in results:
        name = names[r.error.code] if r.HasField("error") else "OK"
        seen[name] = seen.get(name, 0) + 1
    return seen


class Server:
    def __init__(self, folder: Path, text: str = CONFIG) -> None:
        config = folder / "hostile.yaml"
        config.write_text(text)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proctor.engine.cli", "--log-level", "ERROR", "serve", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = 0
        self.http = ""
        for line in self.proc.stdout:
            found = re.search(r"listening on [\d.]+:(\d+)", line)
            if found:
                self.port = int(found.group(1))
                http = re.search(r"http: ([\d.]+:\d+)", line)
                self.http = f"http://{http.group(1)}" if http else ""
            if "proctor: ready" in line:
                break
        if not self.port:
            raise RuntimeError("the server did not start")
        self.target = f"127.0.0.1:{self.port}"

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


async def _health(target: str, stop: asyncio.Event, seen: list[float]) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while not stop.is_set():
            began = time.perf_counter()
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=30)
            seen.append((time.perf_counter() - began) * 1e3)
            await asyncio.sleep(0.01)


async def _innocent(target: str, stop: asyncio.Event, seen: list[float], codes: dict[str, int]) -> None:
    """Another trainer's small calls, one at a time."""
    good = "<think><PLAN>look</PLAN></think><answer>paris</answer>"
    async with grpc.aio.insecure_channel(target) as channel:
        stub = reward_pb2_grpc.RewardModelStub(channel)
        n = 0
        while not stop.is_set():
            n += 1
            began = time.perf_counter()
            try:
                results = [r async for r in stub.Reward(iter([_reward(f"i{n}", good)]), timeout=30)]
                for name, count in _codes(results).items():
                    codes[name] = codes.get(name, 0) + count
            except grpc.aio.AioRpcError as exc:
                codes[f"call {exc.code().name}"] = codes.get(f"call {exc.code().name}", 0) + 1
            seen.append((time.perf_counter() - began) * 1e3)
            await asyncio.sleep(0.05)


async def _rss(server: Server, stop: asyncio.Event, peak: list[float]) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], server.rss_mb())
        await asyncio.sleep(0.05)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


async def watch(target: str) -> None:
    """The watcher process: Health probes and the innocent client until stdin closes, then their numbers as JSON
    on stdout. A process of its own, so the attacker's client-side work does not show as the server's latency."""
    stop = asyncio.Event()
    health: list[float] = []
    innocent: list[float] = []
    codes: dict[str, int] = {}
    loop = asyncio.get_running_loop()
    loop.add_reader(sys.stdin.fileno(), stop.set)
    await asyncio.gather(_health(target, stop, health), _innocent(target, stop, innocent, codes))
    print(json.dumps({"health": health, "innocent": innocent, "codes": codes}), flush=True)


Case = Callable[[str], Awaitable[dict[str, Any]]]


async def measure(server: Server, name: str, case: Case) -> dict[str, Any]:
    stop = asyncio.Event()
    before = server.rss_mb()
    peak = [before]
    watcher = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proctor.bench.hostile", "--watch", server.target,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    sampling = asyncio.create_task(_rss(server, stop, peak))
    await asyncio.sleep(1.5)  # the watcher imports grpc and starts probing
    began = time.perf_counter()
    outcome = await case(server.http if name.startswith("HTTP") else server.target)
    seconds = time.perf_counter() - began
    # at least 3 s watched per case (~250 probes), so that a p99 is not one stall of a shared machine
    await asyncio.sleep(max(0.5, 3.0 - seconds))
    stop.set()
    await sampling
    out, _ = await watcher.communicate(b"stop\n")
    seen = json.loads(out)
    health, innocent = seen["health"], seen["innocent"]
    await asyncio.sleep(1.0)
    return {
        "case": name,
        "seconds": round(seconds, 2),
        "attacker_saw": outcome,
        "health_ms": {"n": len(health), "p50": _pct(health, 0.5), "p99": _pct(health, 0.99), "max": _pct(health, 1)},
        "rss_mb": {"before": round(before, 1), "peak": round(peak[0], 1), "after": round(server.rss_mb(), 1)},
        "innocent_client": {
            "calls": len(innocent),
            "outcomes": seen["codes"],
            "p50_ms": _pct(innocent, 0.5),
            "p99_ms": _pct(innocent, 0.99),
        },
    }


# ---- the cases ------------------------------------------------------------------------------------------------


def _soup(tags: int) -> Callable[[str], Awaitable[dict[str, Any]]]:
    """The issue's case: a policy stuck repeating an unclosed upper-case tag (60 kB froze the server for 22 s)."""

    async def case(target: str) -> dict[str, Any]:
        text = "<think>" + "<A>" * tags + "</think><answer>paris</answer>"
        async with grpc.aio.insecure_channel(target) as channel:
            results = [r async for r in reward_pb2_grpc.RewardModelStub(channel).Reward(iter([_reward("soup", text)]))]
        return {"bytes": len(text), "codes": _codes(results), "reward": results[0].reward}

    return case


async def non_reader(target: str) -> dict[str, Any]:
    """A caller that sends 2,000 rollouts of 54 kB (each result ~55 kB with its atoms) and reads nothing for 5 s."""
    big = "<think>" + ("<A>" + "y" * 20 + "</A>") * 2000 + "</think><answer>x</answer>"

    async def requests() -> AsyncIterator[reward_pb2.RewardRequest]:
        for i in range(2000):
            yield _reward(f"r{i}", big)

    async with grpc.aio.insecure_channel(target) as channel:
        call = reward_pb2_grpc.RewardModelStub(channel).Reward(requests())
        await asyncio.sleep(5)
        call.cancel()
    return {"items_offered": 2000, "read": 0}


async def oversized_result(target: str) -> dict[str, Any]:
    """100 normal Score items and one whose top-64 log-probs over a long target pass the message limit."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = teacher_pb2_grpc.TeacherStub(channel)
        info = await stub.Info(common_pb2.InfoRequest())
        tokens = min(info.max_model_len - 8, 4000)

        def score(item_id: str, target_len: int, top: int) -> teacher_pb2.ScoreRequest:
            ids = common_pb2.TokenIds(ids=[5 + i % 200 for i in range(target_len)])
            return teacher_pb2.ScoreRequest(
                id=item_id,
                context=common_pb2.Prompt(token_ids=common_pb2.TokenIds(ids=[5, 6, 7])),
                target=common_pb2.Prompt(token_ids=ids),
                top_logprobs=top,
            )

        requests = [score(f"n{i}", 8, 2) for i in range(100)]
        requests.insert(50, score("big", tokens, 64))
        results = [r async for r in stub.Score(iter(requests))]
    big = next(r for r in results if r.id == "big")
    return {
        "codes": _codes(results),
        "big_item_error": big.error.message if big.HasField("error") else "none (it fit)",
    }


async def idle_streams(target: str) -> dict[str, Any]:
    """16 idle streams hold every call slot; Health must still answer, a 17th call gets RESOURCE_EXHAUSTED."""
    hold = asyncio.Event()

    async def idle() -> AsyncIterator[reward_pb2.RewardRequest]:
        await hold.wait()
        yield _reward("late", "<answer>x</answer>")

    async with grpc.aio.insecure_channel(target) as channel:
        stub = reward_pb2_grpc.RewardModelStub(channel)
        calls = [stub.Reward(idle()) for _ in range(16)]
        await asyncio.sleep(2)
        try:
            [r async for r in stub.Reward(iter([]))]  # nothing to write: the refusal's status cannot race a send
            extra = "OK"
        except grpc.aio.AioRpcError as exc:
            extra = exc.code().name
        hold.set()
        answered = [len([r async for r in call]) for call in calls]
    return {"idle_calls_answered": sum(answered), "call_past_the_limit": extra}


async def corrupt_protobuf(target: str) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(target) as channel:
        method = channel.stream_stream(
            "/proctor.v1.RewardModel/Reward",
            request_serializer=lambda b: b,
            response_deserializer=reward_pb2.RewardResult.FromString,
        )
        good = _reward("good", "<answer>paris</answer>").SerializeToString()
        messages = [b"\xff\xfe\x00garbage", good, b"\x0a\xff\xff\xff\xff\x0f"] * 50
        try:
            results = [r async for r in method(iter(messages))]
            call = "OK"
        except grpc.aio.AioRpcError as exc:
            results, call = [], exc.code().name
    return {"messages": len(messages), "call": call, "codes": _codes(results)}


async def duplicate_ids(target: str) -> dict[str, Any]:
    batch = reward_pb2.RewardBatch(items=[_reward(i, "<answer>paris</answer>") for i in ("a", "a", "b")])
    async with grpc.aio.insecure_channel(target) as channel:
        replies = [m async for m in reward_pb2_grpc.RewardModelStub(channel).RewardBatched(iter([batch]))]
    results = [r for m in replies for r in m.items]
    return {"ids": sorted(r.id for r in results), "codes": _codes(results)}


async def huge_text_prompts(target: str) -> dict[str, Any]:
    """200 kB of text (refused untokenized) and 100 kB (tokenized off the loop, then refused by length)."""
    requests = [
        teacher_pb2.GenerateRequest(id=f"text{size}", prompt=common_pb2.Prompt(text="word " * (size // 5)))
        for size in (200_000, 100_000)
    ]
    async with grpc.aio.insecure_channel(target) as channel:
        results = [r async for r in teacher_pb2_grpc.TeacherStub(channel).Generate(iter(requests))]
    return {r.id: r.error.message[:100] for r in results}


async def request_over_limit(target: str) -> dict[str, Any]:
    """A request message over max_message_bytes: gRPC refuses it before proctor sees it (a call error)."""
    async with grpc.aio.insecure_channel(target, options=[("grpc.max_send_message_length", 8 << 20)]) as channel:
        try:
            stub = reward_pb2_grpc.RewardModelStub(channel)
            [r async for r in stub.Reward(iter([_reward("big", "x" * (LIMIT + 1024))]))]
            return {"call": "OK"}
        except grpc.aio.AioRpcError as exc:
            return {"call": exc.code().name, "details": (exc.details() or "")[:100]}


async def nothing(target: str) -> dict[str, Any]:
    """The anchor: the same watchers on an unattacked server, in the same run."""
    return {}


CASES: dict[str, Case] = {
    "no attack (the anchor)": nothing,
    "unclosed tag soup, 60 kB": _soup(20_000),
    "unclosed tag soup, 200 kB": _soup(66_000),
    "a caller that reads nothing": non_reader,
    "one result over the message limit": oversized_result,
    "idle streams at the call limit": idle_streams,
    "corrupt protobuf messages": corrupt_protobuf,
    "duplicate ids in one batch": duplicate_ids,
    "huge text prompts": huge_text_prompts,
    "a request over the message limit": request_over_limit,
}


# ---- at the default limits ------------------------------------------------------------------------------------


def _fill(head: str, unit: str, tail: str, chars: int) -> str:
    """`head`, `unit` repeated (the last one cut), `tail`: exactly `chars` characters."""
    body = chars - len(head) - len(tail)
    return head + (unit * (body // len(unit) + 1))[:body] + tail


def shapes(chars: int) -> dict[str, str]:
    """Each shape a degenerate policy (or an attacker) can produce, `chars` characters long."""
    return {
        "'<' repeated": _fill("", "<", "", chars),
        "'\u2039' repeated": _fill("", "\u2039", "", chars),
        "unclosed <A> in a think block": _fill("<think>", "<A>", "</think><answer>paris</answer>", chars),
        "<think> repeated": _fill("", "<think>", "", chars),
        "</think> repeated": _fill("", "</think>", "", chars),
        "closed atoms <A>x</A>": _fill("<think>", "<A>x</A>", "</think><answer>paris</answer>", chars),
        "one atom name as long as the rollout": _fill("<think><", "A", "></think><answer>paris</answer>", chars),
    }


PROMPT = "Q:"  # the HTTP cases' prompt: OpenRLHF's query is the prompt and the response
# The largest rollouts the defaults admit: the question (gRPC: none; HTTP: the prompt), the response and the gold
# "paris" together at reward.max_rollout_chars.
GRPC_SHAPES = shapes(MAX_ROLLOUT_CHARS - len("paris"))
HTTP_SHAPES = shapes(MAX_ROLLOUT_CHARS - len("paris") - len(PROMPT))


def _grpc_rollouts(texts: list[str], batched: bool = False) -> Case:
    async def case(target: str) -> dict[str, Any]:
        requests = [_reward(f"big{i}", text) for i, text in enumerate(texts)]
        options = [("grpc.max_send_message_length", 64 * MiB), ("grpc.max_receive_message_length", 64 * MiB)]
        async with grpc.aio.insecure_channel(target, options=options) as channel:
            stub = reward_pb2_grpc.RewardModelStub(channel)
            if batched:
                batch = reward_pb2.RewardBatch(items=requests)
                results = [r async for m in stub.RewardBatched(iter([batch]), timeout=120) for r in m.items]
            else:
                results = [r async for r in stub.Reward(iter(requests), timeout=120)]
        errors = sorted({r.error.message[:120] for r in results if r.HasField("error")})
        return {"items": len(texts), "chars_each": len(texts[0]), "codes": _codes(results), "errors": errors}

    return case


def _http_rollouts(texts: list[str]) -> Case:
    """OpenRLHF's POST: one query per rollout (prompt + response), UTF-8 JSON."""

    def post(url: str) -> tuple[int, dict[str, Any]]:
        body = json.dumps(
            {"query": [PROMPT + t for t in texts], "prompts": [PROMPT] * len(texts), "labels": ["paris"] * len(texts)},
            ensure_ascii=False,
        ).encode()
        request = urllib.request.Request(
            f"{url}/reward?training_step=1&total_steps=1000", body, {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as reply:
                return int(reply.status), json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    async def case(url: str) -> dict[str, Any]:
        status, payload = await asyncio.to_thread(post, url)
        errors = sorted({str(e.get("message", e))[:120] for e in payload.get("errors", payload.get("items", []))})
        return {"items": len(texts), "status": status, "rewards": payload.get("rewards", [])[:3], "errors": errors}

    return case


DEFAULT_CASES: dict[str, Case] = {"no attack (the anchor, default limits)": nothing}
DEFAULT_CASES |= {f"gRPC: {name}, {len(text):,} chars": _grpc_rollouts([text]) for name, text in GRPC_SHAPES.items()}
DEFAULT_CASES |= {
    "gRPC: a 16 MiB batch of 15 rollouts of '<' at the limit": _grpc_rollouts([GRPC_SHAPES["'<' repeated"]] * 15, True),
    "gRPC: '<' x 16,000,000 (a 16 MiB message; over the rollout limit)": _grpc_rollouts(["<" * 16_000_000]),
}
DEFAULT_CASES |= {f"HTTP: {name}, {len(text):,} chars": _http_rollouts([text]) for name, text in HTTP_SHAPES.items()}
DEFAULT_CASES |= {
    "HTTP: 15 rollouts of '<' at the limit in one body": _http_rollouts([HTTP_SHAPES["'<' repeated"]] * 15),
    "HTTP: '<' x 15,000,000 (a 16 MiB body; over the rollout limit)": _http_rollouts(["<" * 15_000_000]),
}


async def run(only: str = "") -> list[dict[str, Any]]:
    report = []
    for config, cases in ((CONFIG, CASES), (DEFAULTS_CONFIG, DEFAULT_CASES)):
        chosen = {name: case for name, case in cases.items() if only in name}
        if not chosen:
            continue
        server = Server(Path(tempfile.mkdtemp(prefix="proctor-hostile-")), config)
        try:
            report += [await measure(server, name, case) for name, case in chosen.items()]
        finally:
            server.stop()
    return report


def failures(report: list[dict[str, Any]]) -> list[str]:
    out = []
    for case in report:
        if case["health_ms"]["p99"] > HEALTH_P99_MS:
            out.append(f"{case['case']}: Health p99 {case['health_ms']['p99']} ms > {HEALTH_P99_MS}")
        if case["health_ms"]["max"] > HEALTH_MAX_MS:
            out.append(f"{case['case']}: Health max {case['health_ms']['max']} ms > {HEALTH_MAX_MS}")
        if case["rss_mb"]["after"] - case["rss_mb"]["before"] > RSS_GROWTH_MB:
            out.append(f"{case['case']}: RSS {case['rss_mb']} grew past {RSS_GROWTH_MB} MB")
    return out


def copy_ms() -> float:
    """The baseline: how long this machine takes to copy 64 MiB into new memory (the median of 5), what gRPC does
    at least once, holding the GIL, with every message it hands to Python."""
    data = b"<" * (64 * MiB)
    times = []
    for _ in range(5):
        began = time.perf_counter()
        bytearray(data)
        times.append((time.perf_counter() - began) * 1e3)
    return round(sorted(times)[2], 1)


def markdown(report: list[dict[str, Any]], command: str, baseline: dict[str, float]) -> str:
    lines = [
        "# Hostile input against one server (CPU, 127.0.0.1)",
        "",
        f"Command: `{command}`. Device: CPU ({os.cpu_count()} cores). Each case with Health probed every 10 ms and an "
        "innocent client making one small Reward call every 50 ms (both from a watcher process of their own), and the "
        "server's RSS sampled every 50 ms. Baseline, in the same run: copying 64 MiB into new memory took "
        f"{baseline['copy_64mib_ms_before']} ms before the cases and {baseline['copy_64mib_ms_after']} ms after.",
        "",
        "| case | s | Health p50 / p99 / max ms | RSS before / peak / after MB | innocent client | attacker saw |",
        "|---|---|---|---|---|---|",
    ]
    for c in report:
        h, m, i = c["health_ms"], c["rss_mb"], c["innocent_client"]
        innocent = f"{i['calls']} calls, {i['outcomes']}, p99 {i['p99_ms']} ms"
        saw = json.dumps(c["attacker_saw"]).replace("|", "/")
        lines.append(
            f"| {c['case']} | {c['seconds']} | {h['p50']} / {h['p99']} / {h['max']} | "
            f"{m['before']} / {m['peak']} / {m['after']} | {innocent} | {saw} |"
        )
    problems = failures(report)
    lines += ["", f"Bounds (Health p99 <= {HEALTH_P99_MS} ms, max <= {HEALTH_MAX_MS} ms, RSS back within "]
    lines[-1] += f"{RSS_GROWTH_MB} MB): "
    lines[-1] += "all held." if not problems else "; ".join(problems)
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="exit 1 when a bound fails")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the results [bench/results]")
    p.add_argument("--only", default="", metavar="TEXT", help="only the cases whose name holds TEXT")
    p.add_argument("--watch", metavar="TARGET", help=argparse.SUPPRESS)  # the watcher process (see watch)
    args = p.parse_args()
    if args.watch:
        asyncio.run(watch(args.watch))
        return
    command = "python -m proctor.bench.hostile " + " ".join(sys.argv[1:])
    before = copy_ms()
    report = asyncio.run(run(args.only))
    baseline = {"copy_64mib_ms_before": before, "copy_64mib_ms_after": copy_ms()}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{dt.date.today().isoformat()}-cpu-hostile"
    out = {"device": "CPU", "command": command, "baseline": baseline, "cases": report}
    stem.with_suffix(".json").write_text(json.dumps(out, indent=2))
    text = markdown(report, command, baseline)
    stem.with_suffix(".md").write_text(text)
    print(text)
    problems = failures(report)
    if args.check and problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
