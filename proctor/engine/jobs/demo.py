"""`proctor demo`: a real server on free ports, a short session over gRPC through the client library (as a trainer
in Python calls it: one stream per call, a result per id), results printed."""

from __future__ import annotations

import asyncio
import json
import math
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from proctor.clients.critic import AsyncCriticClient, triple_request
from proctor.clients.reward import AsyncRewardClient, reward_request
from proctor.clients.streaming import raise_for_error
from proctor.clients.teacher import AsyncTeacherClient, generate_request, score_request
from proctor.engine.backends.builtin_models import builtin_available
from proctor.engine.config import Config, CriticConfig, RewardConfig, ServerConfig, TeacherConfig
from proctor.engine.jobs import distill
from proctor.engine.server.lifecycle import ProctorServer

_PROMPTS = {
    "store": "PersonX goes to the store. As a result, PersonX",
    "rain": "It started to rain, so the children",
}


def _rule(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)))


_QUESTION = "Which city is the capital of Australia?"
_ROLLOUTS = {
    "well-formed": (
        "<think><PLAN>I should search for the capital of Australia rather than guess Sydney.</PLAN></think>"
        '<tool_call>{"name": "search", "arguments": {"query": "capital of Australia"}}</tool_call>'
        "<tool_response>Canberra is the capital city of Australia.</tool_response>"
        "<think><OBSERVATION>The search result names Canberra.</OBSERVATION>"
        "<VERIFICATION>Canberra, not Sydney, is the seat of government, so the result is right.</VERIFICATION></think>"
        "<answer>Canberra</answer>"
    ),
    "no atoms": "<think>It is probably Sydney, the biggest city.</think><answer>Sydney, Australia</answer>",
    "malformed": "<think><PLAN>Answer directly.</PLAN><answer>Canberra</answer>",
}


async def _reward_session(target: str) -> None:
    _rule("RewardModel.Reward: T = 250 of T_MAX = 1000 -> alpha = 0.375")
    async with AsyncRewardClient(target) as client:
        for mode in ("expected", "rules"):
            requests = [
                reward_request(key, _QUESTION, text, "Canberra", 250, total_steps=1000, mode=mode)
                for key, text in _ROLLOUTS.items()
            ]
            results = await client.reward(requests)
            print(f"-- mode {mode}")
            for key, r in results.items():
                raise_for_error(r)
                r_atom = f"{r.r_atom:.3f}" if r.HasField("r_atom") else "-"
                verdict = "ok" if r.format_ok else f"malformed ({r.format_reason})"
                print(
                    f"[{key}] reward {r.reward:+.3f} = alpha {r.alpha:.3f} * R_atom {r_atom} + "
                    f"(1 - alpha) * R_f1 {r.r_f1:.3f}; format {verdict}{'; no atoms' if r.no_atoms else ''}"
                )
                for a in r.atoms:
                    score = f"{a.score:.2f}/10" if a.HasField("score") else "not scored"
                    print(f"     turn {a.turn} <{a.type}> {score}: {a.text[:60]!r}")
    print("(the expected-mode RRM here is the small demo model; its atom scores show the plumbing, not judgement)")


async def _critic_session(target: str) -> None:
    _rule("Critic.Classify: P(valid) of SKD triples (mean over 5 name draws)")
    triples = [
        ("PersonX adopts a puppy from the shelter", "X_WANT", "to buy dog food"),
        ("PersonX adopts a puppy from the shelter", "X_REACT", "the the the"),
        ("PersonX misses the last train home", "X_ATTR", "unlucky"),
        ("PersonX misses the last train home", "X_ATTR", "to call a taxi"),
    ]
    async with AsyncCriticClient(target) as client:
        results = await client.classify([triple_request(str(i), h, r, t) for i, (h, r, t) in enumerate(triples)])
    for i, (h, r, t) in enumerate(triples):
        res = results[str(i)]
        raise_for_error(res)
        verdict = "accept" if res.accepted else "reject"
        print(f"{verdict} {res.score:.3f} (cut-off {res.cutoff:.3f}): {h} | {r} | {t}")


async def _distill_session(target: str) -> None:
    _rule("proctor distill: 2 events x 3 relations -> inferences -> critic -> JSONL")
    with tempfile.TemporaryDirectory() as folder:
        events = Path(folder) / "events.txt"
        events.write_text("PersonX forgets the umbrella at home\nPersonX helps PersonY move house\n")
        job = distill.DistillJob(
            seed=1, events_file=str(events), relations=("xWant", "xReact", "HinderedBy"), chunk_events=1, inference_n=5
        )
        output = Path(folder) / "corpus"
        summary = await asyncio.to_thread(distill.run, target, output, job)
        for line in (output / "corpus.jsonl").read_text().splitlines()[:8]:
            row = json.loads(line)
            kept = ",".join(k for k, v in row["kept"].items() if v) or "-"
            print(f"  {row['relation']:<10} {row['tail']!r:<40} critic {row['critic_score']:.3f} kept: {kept}")
        distill.print_summary(summary)


async def _info(client: AsyncTeacherClient) -> None:
    info = await client.info()
    _rule("Teacher.Info")
    print(f"model {info.model}\nbackend {info.backend} on {info.device} ({info.dtype}), vocab {info.vocab_size}")


async def _generate(client: AsyncTeacherClient) -> None:
    _rule("Teacher.Generate: 2 prompts x n=3, seed 7, stop at '.', log-probs + top-2")
    params: dict[str, Any] = {"n": 3, "seed": 7, "temperature": 0.8, "top_p": 0.95, "max_tokens": 24}
    requests = [generate_request(key, prompt, stop=["."], top_logprobs=2, **params) for key, prompt in _PROMPTS.items()]
    t0 = time.perf_counter()
    results = await client.generate(requests)
    print(f"({time.perf_counter() - t0:.2f}s for {len(requests)} prompts in one stream)")
    for key, result in results.items():
        raise_for_error(result)
        print(f"\n[{key}] {_PROMPTS[key]!r}  (prompt {len(result.prompt_token_ids)} tokens)")
        for c in result.completions:
            reason = c.stop_reason or ("length" if c.finish_reason == 2 else "eos")
            print(f"  #{c.index} {c.text!r}")
            print(
                f"     {len(c.token_ids)} tokens, stopped by {reason!r}, "
                f"log p = {c.cumulative_logprob:.2f}, first token ids {list(c.token_ids[:4])}, "
                f"log-probs {[round(x, 2) for x in c.logprobs[:4]]}"
            )


async def _score(client: AsyncTeacherClient) -> None:
    _rule("Teacher.Score: log p(target | context), per token")
    context = "The capital of France is"
    scored = await client.score(
        [
            score_request("plain", context, " Paris", top_logprobs=3),
            score_request("odd", context, " a banana", top_logprobs=3),
        ]
    )
    for key, score in scored.items():
        raise_for_error(score)
        total = sum(score.logprobs)
        print(
            f"[{key}] target ids {list(score.target_token_ids)}: log-probs "
            f"{[round(x, 3) for x in score.logprobs]} (sum {total:.2f}, p = {math.exp(total):.2e}); "
            f"top-3 at the first position {list(score.top.token_ids[:3])}"
        )


async def _bad_item(client: AsyncTeacherClient) -> None:
    _rule("a bad item fails alone")
    mixed = await client.generate(
        [generate_request("ok", "Hello", max_tokens=4), generate_request("bad", "Hello", top_p=1.5)]
    )
    for key, result in mixed.items():
        status = f"error in field {result.error.field!r}: {result.error.message}" if result.HasField("error") else "ok"
        print(f"[{key}] {status}")


async def _teacher_session(target: str) -> None:
    async with AsyncTeacherClient(target) as client:
        await _info(client)
        await _generate(client)
        await _score(client)
        await _bad_item(client)


def _metrics_sample(port: int) -> None:
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    _rule("Prometheus")
    print(f"metrics at {metrics_url} (while the server runs); a sample:")
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(("proctor_items_total", "proctor_tokens_total")):
                print(f"  {line}")


def demo_config(model: str, device: str) -> Config:
    """Every service on free ports; the Critic only where its built-in model can be built here."""
    return Config(
        server=ServerConfig(port=0, metrics_port=0),
        teacher=TeacherConfig(model=model, device=device, default_max_tokens=24),
        critic=CriticConfig(model="builtin:critic", device=device) if builtin_available("critic") else None,
        reward=RewardConfig(model=model, device=device),
    )


async def show(config: Config) -> int:
    """Start a server with `config`, run the session against every service it hosts, drain it."""
    if config.teacher is None or config.reward is None:
        raise ValueError("the demo's session calls the Teacher and the RewardModel: host both")
    server = ProctorServer(config)
    print(
        f"starting proctor with teacher {config.teacher.model} (a first run converts SmolLM2 once, ~30 s, and trains "
        "the demo critic once, ~3 min on 2 CPU cores; both are cached) ...",
        flush=True,
    )
    t0 = time.perf_counter()
    await server.start()
    await server.wait_until_ready()
    target = f"127.0.0.1:{server.port}"
    print(f"server ready on {target} in {time.perf_counter() - t0:.1f}s")
    try:
        await _teacher_session(target)
        await _reward_session(target)
        if config.critic is not None:
            await _critic_session(target)
            await _distill_session(target)
        _metrics_sample(server.metrics_port)
    finally:
        await server.drain(grace_s=5)
    print("\ndemo finished; `proctor serve` runs the server on its own (see README).")
    return 0


async def run_demo(model: str, device: str) -> int:
    return await show(demo_config(model, device))
