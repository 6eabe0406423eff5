"""Phase `serve`: the server on the device, through gRPC, every RPC checked against plain torch.

Two servers start side by side on the built models, in float32: one with padded Score batches (it hosts the
Teacher, the Critic and the RewardModel, whose RRM shares the teacher's weights), one with packed Score rows. They
are float32 because the bar here is agreement with a float64 reference within 1e-3: bfloat16's own rounding (2^-8
of a logit near 1) moves a log-prob by several 1e-3, so a bfloat16 server could not be held to it; the bfloat16
kernels are checked against float64 on the same inputs by the kernels phase, and bfloat16 serving is what the bars
time. The reference is the same weights in float64 on the same device, run one sequence at a time by transformers
with a plain log-softmax over the whole vocabulary.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import grpc
import torch

from proctor.bench import load
from proctor.bench.gpu_check import servers
from proctor.bench.gpu_check.context import PhaseContext
from proctor.bench.gpu_check.report import Figure
from proctor.clients.reward import RewardClient, reward_request
from proctor.clients.teacher import TeacherClient, generate_request, score_group_request, score_request
from proctor.engine.doors.grpc.convert import RELATIONS
from proctor.engine.skd.critic_input import triple_pairs
from proctor.v1 import critic_pb2, critic_pb2_grpc, reward_pb2, teacher_pb2

TOLERANCE = 1e-3  # served float32 vs the float64 reference (the bar)
SAME = 1e-4  # two float32 paths that compute the same thing (groups vs whole, packed vs padded)


def _ids(rng: random.Random, n: int, vocab: int) -> list[int]:
    return [rng.randrange(3, vocab) for _ in range(n)]


class Reference:
    """The teacher and the critic in float64, run by transformers one input at a time."""

    def __init__(self, ctx: PhaseContext) -> None:
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

        device = ctx.scale.device
        self.device = torch.device(device)
        self.teacher: Any = AutoModelForCausalLM.from_pretrained(
            ctx.models / "teacher", dtype=torch.float64, device_map=device, attn_implementation="sdpa"
        ).eval()
        self.critic: Any = AutoModelForSequenceClassification.from_pretrained(
            ctx.models / "critic", dtype=torch.float64, device_map=device
        ).eval()
        self.critic_tokenizer = AutoTokenizer.from_pretrained(ctx.models / "critic")

    @torch.inference_mode()
    def logprobs(self, sequence: Sequence[int]) -> torch.Tensor:
        """[len - 1, vocab] float64: row i is log p(. | sequence[: i + 1])."""
        ids = torch.tensor([list(sequence)], device=self.device)
        logits = self.teacher(input_ids=ids).logits[0, :-1]
        return torch.log_softmax(logits.double(), dim=-1)

    @torch.inference_mode()
    def critic_scores(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        out = []
        for first, second in pairs:
            enc = self.critic_tokenizer(first, second, return_tensors="pt").to(self.device)
            out.append(float(torch.sigmoid(self.critic(**enc).logits[0, 0])))
        return out


def _target_error(ref: torch.Tensor, context: int, target: Sequence[int], result: Any, k: int) -> tuple[float, float]:
    """(max |log-prob error|, max |top-k error|) of a Score result against the reference rows of its target. The
    top-k error compares both the k values, sorted, and the reference's own log-prob of each id returned, so that
    ids tied within the tolerance may come in either order."""
    rows = ref[context - 1 : context - 1 + len(target)]
    want = rows.gather(1, torch.tensor(list(target), device=rows.device)[:, None])[:, 0]
    got = torch.tensor(list(result.logprobs), dtype=torch.float64, device=rows.device)
    lp_err = float((got - want).abs().max())
    if not k:
        return lp_err, 0.0
    ids, vals = (t.to(rows.device) for t in top_k(result.top))
    ref_vals = rows.topk(k, dim=-1).values
    at_ids = rows.gather(1, ids)
    return lp_err, float(max((vals - ref_vals).abs().max(), (vals - at_ids).abs().max()))


def top_k(top: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A TopK message as ([positions, k] ids, [positions, k] float64 log-probs)."""
    k = max(top.k, 1)
    ids = torch.tensor(list(top.token_ids), dtype=torch.long).view(-1, k)
    return ids, torch.tensor(list(top.logprobs), dtype=torch.float64).view(-1, k)


def _max_diff(a: Sequence[float], b: Sequence[float]) -> float:
    if len(a) != len(b):
        return float("inf")
    return max((abs(x - y) for x, y in zip(a, b, strict=True)), default=0.0)


def run(ctx: PhaseContext) -> None:
    s, log = ctx.scale, ctx.log
    backend = servers.teacher_section(ctx, "float32", score_packing="padded")  # the RRM shares it: same settings
    padded = servers.config(
        teacher=backend,
        critic={"model": str(ctx.models / "critic"), "device": s.device, "dtype": "float32", "cutoff": 0.5},
        reward={**backend, "mode": "expected", "total_steps": 100},
    )
    packed = servers.config(teacher=servers.teacher_section(ctx, "float32", score_packing="packed"))
    with servers.running(ctx, {"padded": padded, "packed": packed}, lambda: Reference(ctx)) as (up, ref):
        log.check("servers up", True, ", ".join(f"{n} at {u.target}" for n, u in up.items()))
        target, metrics = up["padded"].target, up["padded"].metrics
        states = servers.health(target, list(servers.SERVICES.values()))
        log.check("health", all(v == "SERVING" for v in states.values()), str(states))
        teacher = TeacherClient(target, timeout_s=300, max_message_bytes=servers.MAX_MESSAGE)
        vocab = teacher.info().vocab_size
        rng = random.Random(0)
        _generate(ctx, teacher, ref, rng, vocab)
        requests, results = _score(ctx, teacher, ref, rng, vocab)
        _groups(ctx, teacher, rng, vocab)
        packed_client = TeacherClient(up["packed"].target, timeout_s=300, max_message_bytes=servers.MAX_MESSAGE)
        again = packed_client.score(requests)
        diff = max(_max_diff(results[r.id].logprobs, again[r.id].logprobs) for r in requests)
        log.figure(Figure("Score packed vs padded rows, max abs Δ log-prob", diff, "nats", SAME, False))
        log.check("packed rows = padded rows", diff <= SAME, f"{len(requests)} sequences, max abs Δ {diff:.1e}")
        _critic(ctx, target, ref, rng)
        _rrm(ctx, target)
        _memory(ctx, metrics)
        teacher.close()
        packed_client.close()


def _generate(ctx: PhaseContext, teacher: TeacherClient, ref: Reference, rng: random.Random, vocab: int) -> None:
    log, n, new = ctx.log, 4, 16
    prompt = _ids(rng, 24, vocab)

    def ask(id: str, seed: int) -> teacher_pb2.GenerateRequest:
        return generate_request(id, prompt, seed=seed, n=n, temperature=1.0, max_tokens=new, ignore_eos=True,
                                logprobs=True, top_logprobs=5)  # fmt: skip

    first = teacher.generate([ask("a", 7)])["a"]
    again = teacher.generate([ask("a", 7), ask("b", 8)])
    detail = f"n={n}, {new} tokens, top-5 {first.error.message}"
    if not log.check("Generate answers", not first.HasField("error"), detail):
        return
    samples = [list(c.token_ids) for c in first.completions]
    shaped = len(samples) == n and all(
        len(c.token_ids) == new and len(c.logprobs) == new and top_k(c.top)[0].shape == (new, 5)
        for c in first.completions
    )
    log.check("Generate shape", shaped, f"{n} completions x {new} tokens, log-probs and top-5 at each")
    same = samples == [list(c.token_ids) for c in again["a"].completions]
    other = samples != [list(c.token_ids) for c in again["b"].completions]
    log.check("Generate seed", same and other, f"seed 7 twice: {'same' if same else 'DIFFERENT'} tokens; seed 8: "
              f"{'other' if other else 'the SAME'} tokens")  # fmt: skip
    err = 0.0
    for c in first.completions:
        rows = ref.logprobs(prompt + list(c.token_ids))[len(prompt) - 1 :]
        want = rows.gather(1, torch.tensor(list(c.token_ids), device=rows.device)[:, None])[:, 0]
        err = max(
            err, float((torch.tensor(list(c.logprobs), dtype=torch.float64, device=rows.device) - want).abs().max())
        )
        top1 = top_k(c.top)[1][:, 0].to(rows.device)
        err = max(err, float((top1 - rows.max(dim=-1).values).abs().max()))
    log.figure(Figure("Generate log-probs vs float64, max abs error", err, "nats", TOLERANCE, False,
                      note="sampled tokens' log-probs and top-1 under the KV cache, against a float64 forward of "
                           "prompt + completion"))  # fmt: skip
    log.check("Generate log-probs = float64", err <= TOLERANCE, f"max abs error {err:.1e}")


def _score(
    ctx: PhaseContext, teacher: TeacherClient, ref: Reference, rng: random.Random, vocab: int
) -> tuple[list[teacher_pb2.ScoreRequest], dict[str, teacher_pb2.ScoreResult]]:
    """Score with top-20 against the float64 reference; returns the requests and their answers (for packed rows)."""
    n = ctx.scale.score_len
    shapes = [(1, n // 16 - 1), (n // 10, n // 2 - n // 10), (n // 4, n - n // 4), (n - n // 16, n // 16)]
    requests, sequences = [], []
    for i, (context, length) in enumerate(shapes):
        seq = _ids(rng, context + length, vocab)
        sequences.append((seq, context))
        requests.append(score_request(str(i), seq[:context], seq[context:], top_logprobs=20))
    results = teacher.score(requests)
    errors = [r.id for r in requests if results[r.id].HasField("error")]
    if not ctx.log.check("Score answers", not errors, f"{len(requests)} sequences {shapes}, top-20; errors: {errors}"):
        return requests, results
    lp_err = top_err = 0.0
    for (seq, context), request in zip(sequences, requests, strict=True):
        a, b = _target_error(ref.logprobs(seq), context, seq[context:], results[request.id], 20)
        lp_err, top_err = max(lp_err, a), max(top_err, b)
    ctx.log.figure(Figure("Score log-probs vs float64, max abs error", lp_err, "nats", TOLERANCE, False))
    ctx.log.figure(Figure("Score top-20 vs float64, max abs error", top_err, "nats", TOLERANCE, False,
                          note="the 20 values sorted, and the reference's log-prob of each id returned"))  # fmt: skip
    ok = lp_err <= TOLERANCE and top_err <= TOLERANCE
    ctx.log.check("Score top-20 = float64", ok, f"log-probs {lp_err:.1e}, top-20 {top_err:.1e}")
    return requests, results


def _groups(ctx: PhaseContext, teacher: TeacherClient, rng: random.Random, vocab: int) -> None:
    n = ctx.scale.score_len
    context = _ids(rng, n // 4, vocab)
    conts = [_ids(rng, length, vocab) for length in (1, 2, n // 8, n // 4, n // 2, n // 3)]
    group = teacher.score([score_group_request("g", context, conts, top_logprobs=5)])["g"]
    whole = teacher.score([score_request(f"w{i}", context, c, top_logprobs=5) for i, c in enumerate(conts)])
    if not ctx.log.check("Score group answers", not group.HasField("error"), f"{len(conts)} continuations: "
                         f"{group.error}"):  # fmt: skip
        return
    diff = 0.0
    for i, scores in enumerate(group.continuations):
        w = whole[f"w{i}"]
        diff = max(diff, _max_diff(scores.logprobs, w.logprobs))
        diff = max(diff, _max_diff(scores.top.logprobs, w.top.logprobs))
    ctx.log.figure(Figure("Score group vs each continuation whole, max abs Δ", diff, "nats", SAME, False))
    ctx.log.check("Score groups = independent", diff <= SAME, f"{len(conts)} continuations, max abs Δ {diff:.1e}")


def _critic(ctx: PhaseContext, target: str, ref: Reference, rng: random.Random) -> None:
    work = load.workloads(2048)["skd"]
    triples = [work.make(rng, i).triple for i in range(8)]
    pairs = [p for i, t in enumerate(triples) for p in triple_pairs(t.head, RELATIONS[t.relation], t.tail, seed=i)]
    requests = [
        critic_pb2.ClassifyRequest(id=f"p{i}", pair=critic_pb2.TextPair(first=p.first, second=p.second))
        for i, p in enumerate(pairs)
    ] + [critic_pb2.ClassifyRequest(id=f"t{i}", triple=t) for i, t in enumerate(triples)]
    with grpc.insecure_channel(target) as channel:
        results = {r.id: r for r in critic_pb2_grpc.CriticStub(channel).Classify(iter(requests), timeout=120)}
    errors = [i for i, r in results.items() if r.HasField("error")]
    if not ctx.log.check("Critic answers", not errors and len(results) == len(requests), f"{len(pairs)} pairs and "
                         f"{len(triples)} triples; errors: {errors}"):  # fmt: skip
        return
    want = ref.critic_scores([(p.first, p.second) for p in pairs])
    err = max(abs(results[f"p{i}"].score - w) for i, w in enumerate(want))
    ctx.log.figure(Figure("Critic P(valid) vs float64, max abs error", err, "", TOLERANCE, False))
    verdicts = all((r.score > r.cutoff) == r.accepted and 0 <= r.score <= 1 for r in results.values())
    ctx.log.check("Critic = float64", err <= TOLERANCE and verdicts, f"pairs max abs error {err:.1e}; triples' "
                  f"verdicts {'consistent' if verdicts else 'INCONSISTENT'} with their cut-offs")  # fmt: skip


def _rrm(ctx: PhaseContext, target: str) -> None:
    rollout = load._rollout(random.Random(1))
    client = RewardClient(target, timeout_s=300)

    def ask(mode: str) -> reward_pb2.RewardRequest:
        return reward_request(mode, "Which city?", rollout, "Paris", 50, total_steps=100, mode=mode,
                              return_rrm_text=True)  # fmt: skip

    first = client.reward([ask("expected")])["expected"]
    again = client.reward([ask("expected")])["expected"]
    scored = not first.HasField("error") and first.HasField("r_atom") and first.atoms
    in_range = scored and all(0.0 <= a.score <= 10.0 for a in first.atoms)
    ctx.log.check("RRM expected mode", bool(in_range) and again.reward == first.reward,
                  f"{len(first.atoms)} atoms scored 0-10, R_atom {first.r_atom:.3f}, deterministic: "
                  f"{again.reward == first.reward}; error: {first.error.message or '-'}")  # fmt: skip
    judged = client.reward([ask("generate")])["generate"]
    # A random-init judge writes gibberish: the retry policy must end it as INTERNAL naming the attempts.
    gibberish = judged.error.code == grpc.StatusCode.INTERNAL.value[0] and "unparseable after" in judged.error.message
    ctx.log.check("RRM generate mode", judged.HasField("r_atom") or gibberish,
                  f"R_atom {judged.r_atom:.3f}" if judged.HasField("r_atom") else
                  f"the random judge's text was refused as expected: {judged.error.message[:120]}")  # fmt: skip
    client.close()


def _memory(ctx: PhaseContext, metrics_url: str) -> None:
    held = servers.gauge(metrics_url, "proctor_gpu_memory_bytes")
    peak = servers.gauge(metrics_url, "proctor_gpu_memory_peak_bytes")
    if ctx.scale.device != "cuda":
        ctx.log.check("GPU memory gauge", held is None and peak is None, "no gauge on a CPU server, as it should be")
        return
    total = torch.cuda.get_device_properties(0).total_memory
    weights = servers.weights_bytes(ctx.models / "teacher", 4, 2) + servers.weights_bytes(ctx.models / "critic", 4, 2)
    bounded = held is not None and peak is not None and weights <= held <= peak <= min(total, weights + 4 * 2**30)
    ctx.log.check("GPU memory gauge", bounded, f"held {held or 0:.3g} B, peak {peak or 0:.3g} B; float32 weights "
                  f"{weights:.3g} B, bound weights + 4 GiB, card {total:.3g} B")  # fmt: skip
