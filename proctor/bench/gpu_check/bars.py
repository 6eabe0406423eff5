"""Phase `bars`: the issue's rates through gRPC, each beside its anchor measured in the same run.

One server in the bars' dtype (bfloat16 on a GPU) hosts the teacher (padded Score batches, sdpa) and the critic.
- Score: sequences of 1,024 tokens (256 context + 768 target), 16 to a batch (16k tokens = max_score_tokens),
  4 client streams; tokens/s counts every token the forward reads. Anchor: the same model's transformers forward
  + a float32 log_softmax over the vocabulary, in this process, 16 sequences at a time. Bar: >= 200k tok/s, with
  <= 1 GiB of server memory beyond what it held before (its gauge) per 16k-token batch.
- Score top-20: the same with the top 20 at every target position; anchor adds torch.topk. Bar: >= 150k tok/s.
- Serving overhead: the Score bar's requests through the torch backend called in this process (no gRPC, same
  batching): the gRPC time over it. Bar: < 3 %.
- GRPO groups: 64 prompts x 16 continuations, 1,024 + 512 tokens, as Score groups (the context once). Anchor: the
  same 1,024 sequences scored whole. Bar: <= 3.0 s.
- Score top-20 through HTTP: the top-20 bar's sequences as vLLM's `/v1/completions` with `prompt_logprobs: 20`,
  the route trainers that speak vLLM's API call. Anchor: the same through gRPC. Bar: >= 150k tok/s.
- Critic: SKD triples (5 name draws = 5 pairs each) on ClassifyBatched, 4 streams. Anchor: the same pairs
  tokenized and run by transformers in this process, length-sorted into the server's batch limits. Bar: >= 30k
  pairs/s.
Shares of the ceiling count the forward's matrix FLOPs (models.py) over the matrix rate `env` measured.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from proctor.bench import load
from proctor.bench.gpu_check import servers
from proctor.bench.gpu_check.context import PhaseContext
from proctor.bench.gpu_check.models import decoder_flops, encoder_flops
from proctor.bench.gpu_check.report import Figure
from proctor.bench.gpu_check.scale import Scale
from proctor.clients.teacher import TeacherClient, score_group_request, score_request
from proctor.engine.backends.torch.generator import TorchGenerator
from proctor.engine.doors.grpc.convert import RELATIONS
from proctor.engine.items import ScoreItem
from proctor.engine.skd.critic_input import triple_pairs
from proctor.v1 import teacher_pb2, teacher_pb2_grpc

BATCH = 16  # sequences per Score batch: 16 x 1,024 tokens
WARM_SEED = 12345  # the warm-up Score requests; their answers are kept for the packed phase to compare


def score_requests(s: Scale, count: int, top: int, seed: int, vocab: int) -> list[teacher_pb2.ScoreRequest]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        ids = [rng.randrange(3, vocab) for _ in range(s.score_len)]
        out.append(score_request(str(i), ids[: s.score_context], ids[s.score_context :], top_logprobs=top))
    return out


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _target(s: Scale, gpu_value: float) -> float | None:
    """Bars are the GPU's: the rehearsal reports its figures without judging them."""
    return None if s.rehearse else gpu_value


class Anchors:
    """The in-process anchors: the teacher and the critic in the bars' dtype, run by transformers."""

    def __init__(self, ctx: PhaseContext) -> None:
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

        dtype, device = getattr(torch, ctx.scale.dtype), ctx.scale.device
        self.device = device
        self.teacher: Any = AutoModelForCausalLM.from_pretrained(
            ctx.models / "teacher", dtype=dtype, device_map=device, attn_implementation="sdpa"
        ).eval()
        self.critic: Any = AutoModelForSequenceClassification.from_pretrained(
            ctx.models / "critic", dtype=dtype, device_map=device
        ).eval()
        self.critic_tokenizer = AutoTokenizer.from_pretrained(ctx.models / "critic")

    @torch.inference_mode()
    def score(self, requests: list[teacher_pb2.ScoreRequest], top: int) -> float:
        """Seconds for transformers' forward + log_softmax (+ top-k) over the requests, BATCH at a time."""

        def run() -> None:
            for start in range(0, len(requests), BATCH):
                batch = requests[start : start + BATCH]
                ids = torch.tensor([[*r.context.token_ids.ids, *r.target.token_ids.ids] for r in batch])
                context = len(batch[0].context.token_ids.ids)
                ids = ids.to(self.device)
                logprobs = torch.log_softmax(self.teacher(input_ids=ids).logits[:, context - 1 : -1].float(), dim=-1)
                logprobs.gather(2, ids[:, context:, None])
                if top:
                    logprobs.topk(top, dim=-1)

        run()  # warm-up
        return _timed(run, self.device)

    @torch.inference_mode()
    def critic_pairs(self, pairs: list[tuple[str, str]], max_items: int, max_tokens: int) -> tuple[float, float, float]:
        """(seconds to tokenize, seconds for the model, mean tokens per pair): length-sorted batches under the
        server's limits (pairs, padded tokens), each padded to its longest."""
        t0 = time.perf_counter()
        encoded = self.critic_tokenizer([p[0] for p in pairs], [p[1] for p in pairs])["input_ids"]
        tokenize_s = time.perf_counter() - t0
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        batches: list[list[int]] = [[]]
        for i in order:
            width = len(encoded[i])  # sorted: the batch's longest so far
            if batches[-1] and (len(batches[-1]) >= max_items or (len(batches[-1]) + 1) * width > max_tokens):
                batches.append([])
            batches[-1].append(i)

        def run() -> None:
            for batch in batches:
                width = max(len(encoded[i]) for i in batch)
                ids = torch.zeros((len(batch), width), dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
                    mask[row, : len(encoded[i])] = 1
                logits = self.critic(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                torch.sigmoid(logits[:, 0].float())

        run()  # warm-up
        return tokenize_s, _timed(run, self.device), sum(map(len, encoded)) / len(encoded)


def _backend_seconds(ctx: PhaseContext, requests: list[teacher_pb2.ScoreRequest]) -> float:
    """The torch backend called in this process on the same requests (the serving overhead's anchor)."""

    async def go() -> float:
        backend = TorchGenerator(
            str(ctx.models / "teacher"), device=ctx.scale.device, dtype=ctx.scale.dtype,
            max_score_tokens=ctx.scale.max_score_tokens, score_packing="padded",
        )  # fmt: skip
        await backend.start()
        items = [ScoreItem(list(r.context.token_ids.ids), list(r.target.token_ids.ids)) for r in requests]
        await asyncio.gather(*(backend.score(x) for x in items[: BATCH * 2]))  # warm-up
        t0 = time.perf_counter()
        await asyncio.gather(*(backend.score(x) for x in items))
        seconds = time.perf_counter() - t0
        await backend.close()
        return seconds

    return asyncio.run(go())


def run(ctx: PhaseContext) -> None:
    s, log = ctx.scale, ctx.log
    critic = {"model": str(ctx.models / "critic"), "device": s.device, "dtype": s.dtype, "cutoff": 0.5,
              "max_batch_items": 1024, "max_batch_tokens": 49152}  # fmt: skip
    http = _free_port()
    text = servers.config(teacher=servers.teacher_section(ctx, s.dtype, score_packing="padded"), critic=critic,
                          http={"port": http})  # fmt: skip
    with servers.running(ctx, {"bars": text}, lambda: Anchors(ctx)) as (up, anchors):
        served = up["bars"]
        teacher = TeacherClient(served.target, timeout_s=600, max_message_bytes=servers.MAX_MESSAGE)
        vocab = teacher.info().vocab_size
        warm = score_requests(s, BATCH, 20, WARM_SEED, vocab)
        answers = teacher.score(warm)
        errors = [r.id for r in warm if answers[r.id].HasField("error")]
        log.check("warm-up", not errors, f"{BATCH} Score requests with top-20 (compiles the kernels); errors {errors}")
        servers_dir = ctx.workdir / "padded-scores.json"
        servers_dir.write_text(json.dumps({r.id: list(answers[r.id].logprobs) for r in warm}))
        teacher.score([score_group_request("w", [3] * s.grpo_context, [[4] * s.grpo_cont] * s.grpo_n)])
        held = servers.gauge(served.metrics, "proctor_gpu_memory_bytes")
        requests = _score_bars(ctx, served, anchors, vocab, held)
        _http_top20(ctx, f"http://127.0.0.1:{http}", vocab)
        seconds = _backend_seconds(ctx, requests)
        log.data(backend_direct_s=seconds)
        grpc_s = float(log.record.data["score_grpc_s"])
        overhead = (grpc_s - seconds) / seconds * 100
        log.figure(Figure("serving overhead (Score)", overhead, "% of model time", _target(s, 3.0), False,
                          anchor=f"the torch backend called in process: {seconds:.3f} s (gRPC {grpc_s:.3f} s)",
                          note=f"the Score bar's {len(requests)} sequences both ways"))  # fmt: skip
        _grpo(ctx, teacher, vocab)
        _critic(ctx, served, anchors)
        teacher.close()


def _score_bars(
    ctx: PhaseContext, served: Any, anchors: Anchors, vocab: int, held: float | None
) -> list[teacher_pb2.ScoreRequest]:
    s, log = ctx.scale, ctx.log
    flops = decoder_flops(s.teacher, s.score_len, s.score_len - s.score_context)
    plain: list[teacher_pb2.ScoreRequest] = []
    for name, top, count, bar in (("Score", 0, s.score_seqs, 200_000.0), ("Score top-20", 20, s.top20_seqs, 150_000.0)):
        requests = score_requests(s, count, top, seed=top, vocab=vocab)
        plain = plain or requests

        def make(rng: random.Random, i: int, requests: list[teacher_pb2.ScoreRequest] = requests) -> Any:
            return requests[i]

        work = load.Workload(name, teacher_pb2_grpc.TeacherStub, "Score", make, lambda r: s.score_len, step=BATCH)
        [level] = asyncio.run(load.run_levels(served.target, work, "closed", [float(s.concurrency)], count,
                                              metrics_url=served.metrics))  # fmt: skip
        if top == 0:
            log.data(score_grpc_s=level.seconds)
        anchor_s = anchors.score(requests, top)
        bad = sum(level.errors.values())
        log.check(f"{name} bar answers", bad == 0 and level.items == count, f"{level.items} of {count}, errors "
                  f"{level.errors or 0}; batches of {level.batch_items_mean or 0:.1f} items, "
                  f"{level.batch_padding_mean or 0:.0%} padding")  # fmt: skip
        log.figure(Figure(f"{name} through gRPC", level.tokens_per_s, "tok/s", _target(s, bar),
                          anchor="transformers forward + float32 log_softmax" + (" + topk" if top else "")
                          + ", in process", anchor_value=count * s.score_len / anchor_s,
                          of_ceiling=ctx.matmul_share(level.tokens_per_s * flops / s.score_len),
                          ceiling=ctx.matmul_ceiling(),
                          note=f"{count} x {s.score_len} tokens ({s.score_context} context), {s.concurrency} "
                               f"streams, {level.seconds:.2f} s"))  # fmt: skip
        if level.gpu_memory_peak_gib is not None and held is not None:
            extra = level.gpu_memory_peak_gib - held / 2**30
            log.figure(Figure(f"{name}: server memory beyond its weights, per 16k-token batch", extra, "GiB",
                              _target(s, 1.0), False, note=f"gauge peak {level.gpu_memory_peak_gib:.2f} GiB - held "
                              f"before the bars {held / 2**30:.2f} GiB"))  # fmt: skip
    return plain


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _post(url: str, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as err:
        return int(err.code), bytes(err.read())


def _http_top20(ctx: PhaseContext, base: str, vocab: int) -> None:
    """The Score top-20 bar's sequences as vLLM-compatible `/v1/completions` with `prompt_logprobs: 20` (scoring
    only), BATCH prompts a request, on `concurrency` connections: what trainers speaking vLLM's HTTP API send."""
    s, log = ctx.scale, ctx.log
    prompts = [
        [*r.context.token_ids.ids, *r.target.token_ids.ids] for r in score_requests(s, s.top20_seqs, 20, 20, vocab)
    ]
    bodies = [json.dumps({"prompt": prompts[i : i + BATCH], "max_tokens": 0, "prompt_logprobs": 20}).encode()
              for i in range(0, len(prompts), BATCH)]  # fmt: skip
    url = base + "/v1/completions"
    status, first = _post(url, bodies[0])  # the warm-up, whose answer is read whole
    choices = json.loads(first).get("choices", []) if status == 200 else []
    positions = [c.get("prompt_logprobs") or [] for c in choices]
    shaped = len(choices) == BATCH and all(
        len(p) == s.score_len and p[0] is None and all(20 <= len(e) <= 21 for e in p[1:]) for p in positions
    )
    if not log.check("HTTP prompt_logprobs answers", shaped, f"status {status}; {len(choices)} choices of "
                     f"{[len(p) for p in positions][:2]} positions with the actual token + top-20 each"):  # fmt: skip
        return

    def post(body: bytes) -> int:
        return _post(url, body)[0]  # the bytes are dropped at once: the client must not be the bottleneck

    t0 = time.perf_counter()
    with ThreadPoolExecutor(s.concurrency) as pool:
        statuses = list(pool.map(post, bodies))
    seconds = time.perf_counter() - t0
    bad = [x for x in statuses if x != 200]
    log.check("HTTP bar answers", not bad, f"{len(bodies)} requests of {BATCH} prompts; not 200: {bad}")
    bars = {f.name: f for f in log.record.figures}
    grpc = bars.get("Score top-20 through gRPC")
    rate = len(prompts) * s.score_len / seconds
    log.figure(Figure("Score top-20 through HTTP (/v1/completions prompt_logprobs)", rate, "tok/s",
                      _target(s, 150_000.0), anchor="the same sequences' Score top-20 through gRPC",
                      anchor_value=grpc.value if grpc else None,
                      of_ceiling=ctx.matmul_share(rate * decoder_flops(s.teacher, s.score_len, s.score_len - 1)
                                                  / s.score_len), ceiling=ctx.matmul_ceiling(),
                      note=f"{len(prompts)} x {s.score_len} tokens, top-20 at every position, {s.concurrency} "
                           f"connections, {seconds:.2f} s; vLLM's own server did 17k tok/s with top-20 on an H100 "
                           "(issue 20)"))  # fmt: skip


def _grpo(ctx: PhaseContext, teacher: TeacherClient, vocab: int) -> None:
    s, log = ctx.scale, ctx.log
    rng = random.Random(64)
    prompts = [[rng.randrange(3, vocab) for _ in range(s.grpo_context)] for _ in range(s.grpo_prompts)]
    conts = [[[rng.randrange(3, vocab) for _ in range(s.grpo_cont)] for _ in range(s.grpo_n)] for _ in prompts]
    groups = [score_group_request(str(i), p, c) for i, (p, c) in enumerate(zip(prompts, conts, strict=True))]
    whole = [score_request(f"{i}.{j}", p, x) for i, (p, c) in enumerate(zip(prompts, conts, strict=True))
             for j, x in enumerate(c)]  # fmt: skip
    t0 = time.perf_counter()
    grouped = teacher.score(groups)
    group_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    wholes = teacher.score(whole)
    whole_s = time.perf_counter() - t0
    bad = [k for k, r in [*grouped.items(), *wholes.items()] if r.HasField("error")]
    log.check("GRPO answers", not bad, f"{len(groups)} groups and {len(whole)} whole sequences; errors {bad[:5]}")
    context_flops = decoder_flops(s.teacher, s.grpo_context, 1)
    per_group = context_flops + s.grpo_n * (decoder_flops(s.teacher, s.grpo_context + s.grpo_cont, s.grpo_cont)
                                            - decoder_flops(s.teacher, s.grpo_context, 0))  # fmt: skip
    log.figure(Figure("GRPO groups, one step", group_s, "s", _target(s, 3.0), False,
                      anchor="every sequence scored whole, same server", anchor_value=whole_s,
                      of_ceiling=ctx.matmul_share(s.grpo_prompts * per_group / group_s), ceiling=ctx.matmul_ceiling(),
                      note=f"{s.grpo_prompts} prompts x {s.grpo_n} x ({s.grpo_context} + {s.grpo_cont}) tokens; "
                           f"speed-up over whole {whole_s / group_s:.2f}x"))  # fmt: skip


def _critic(ctx: PhaseContext, served: Any, anchors: Anchors) -> None:
    s, log = ctx.scale, ctx.log
    work = load.workloads(2048)["skd"]
    level_value = float(s.concurrency)
    [level] = asyncio.run(load.run_levels(served.target, work, "closed", [level_value], s.critic_triples, 256,
                                          metrics_url=served.metrics))  # fmt: skip
    rng = random.Random(int(level_value))  # the triples run_levels sent
    triples = [work.make(rng, i).triple for i in range(s.critic_triples)]
    pairs = [(p.first, p.second) for t in triples for p in triple_pairs(t.head, RELATIONS[t.relation], t.tail)]
    tokenize_s, model_s, mean_len = anchors.critic_pairs(pairs, 1024, 49152)
    pairs_per_s = level.items_per_s * len(pairs) / len(triples)
    log.check("critic bar answers", not level.errors and level.items == s.critic_triples,
              f"{level.items} triples, errors {level.errors or 0}")  # fmt: skip
    log.figure(Figure("Critic through gRPC", pairs_per_s, "pairs/s", _target(s, 30_000.0),
                      anchor="transformers, length-sorted batches in process (model only)",
                      anchor_value=len(pairs) / model_s,
                      of_ceiling=ctx.matmul_share(pairs_per_s * encoder_flops(s.critic, round(mean_len))),
                      ceiling=ctx.matmul_ceiling(),
                      note=f"{len(triples)} triples x 5 draws, {mean_len:.1f} tokens a pair; the anchor's tokenizing "
                           f"took {tokenize_s:.2f} s more ({len(pairs) / (model_s + tokenize_s):,.0f} pairs/s "
                           "with it)"))  # fmt: skip
