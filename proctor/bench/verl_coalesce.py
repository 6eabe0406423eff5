"""verl's per-sample reward calls, thousands at once: coalesced into shared streams vs a stream per call.

    python -m proctor.bench.verl_coalesce --calls 4096 --rounds 3

verl ≥ 0.7's reward loop calls a reward function once per sample, all of a worker's samples concurrently. This
runs `calls` concurrent `proctor.clients.verl.compute_score_async` calls (rules-only rollouts, explicit T) against
its own rules-only server in the same process, and, as the anchor of the same run, the same calls as one
RewardModel stream each on one shared channel. Writes bench/results/YYYY-MM-DD-cpu-verl-coalesce.{json,md}:
the median wall time of each over `rounds`, calls/s, and the streams the coalescer opened.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import statistics
import time
from pathlib import Path

from proctor.clients import verl
from proctor.clients.coalesce import coalescer_for_loop
from proctor.clients.reward import AsyncRewardClient, reward_request
from proctor.engine.config import Config, RewardConfig, ServerConfig
from proctor.engine.server.lifecycle import ProctorServer

RESULTS = Path(__file__).resolve().parent / "results"
ROLLOUT = "<think><PLAN>look it up</PLAN></think><answer>the city of Paris</answer>"


async def run(calls: int, rounds: int) -> dict[str, object]:
    config = Config(
        server=ServerConfig(port=0, metrics_port=-1),
        reward=RewardConfig(model="", mode="rules", total_steps=10),
    )
    server = ProctorServer(config)
    await server.start()
    await server.wait_until_ready()
    target = f"127.0.0.1:{server.port}"
    extra = {"question": "Where?", "training_step": 1}
    coalesced, per_call, streams = [], [], []
    try:
        async with AsyncRewardClient(target, timeout_s=600) as client:
            for _ in range(rounds):
                coalescer = coalescer_for_loop(target)
                before = coalescer.streams
                started = time.perf_counter()
                scores = await asyncio.gather(
                    *(verl.compute_score_async("nq", ROLLOUT, "Paris", extra, target=target) for _ in range(calls))
                )
                coalesced.append(time.perf_counter() - started)
                streams.append(coalescer.streams - before)
                assert all(s["score"] == scores[0]["score"] for s in scores)
                started = time.perf_counter()
                await asyncio.gather(
                    *(client.reward([reward_request(str(i), "Where?", ROLLOUT, "Paris", 1)]) for i in range(calls))
                )
                per_call.append(time.perf_counter() - started)
    finally:
        await server.drain(grace_s=1)
    coalesced_s, per_call_s = statistics.median(coalesced), statistics.median(per_call)
    return {
        "device": "cpu",
        "calls": calls,
        "rounds": rounds,
        "coalesced_s": coalesced_s,
        "coalesced_calls_per_s": calls / coalesced_s,
        "coalesced_streams": streams,
        "stream_per_call_s": per_call_s,
        "stream_per_call_calls_per_s": calls / per_call_s,
        "speedup": per_call_s / coalesced_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    result = asyncio.run(run(args.calls, args.rounds))
    command = f"python -m proctor.bench.verl_coalesce --calls {args.calls} --rounds {args.rounds}"
    stem = RESULTS / f"{dt.date.today().isoformat()}-cpu-verl-coalesce"
    stem.with_suffix(".json").write_text(json.dumps({"command": command, **result}, indent=2) + "\n")
    rows = "\n".join(f"| {k} | {v} |" for k, v in result.items())
    stem.with_suffix(".md").write_text(
        "# verl per-sample reward calls: coalesced vs a stream per call (CPU, client and server in one process)\n\n"
        f"Command: `{command}`\n\n| | value |\n|---|---|\n{rows}\n"
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
