"""The Teacher service: Generate and Score over any Generator backend, and Info."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any

import grpc

from proctor.engine.backends.base import Generator
from proctor.engine.config import TeacherConfig
from proctor.engine.errors import ItemError
from proctor.engine.items import FinishReason, GenerateItem, SamplingParams, ScoreGroupItem, ScoreItem
from proctor.engine.services import convert
from proctor.engine.services.sampling_checks import check_top_logprobs, checked_sampling
from proctor.engine.services.streams import CallMetrics, ServiceContext, StreamSpec, run_stream
from proctor.engine.skd import prompts as skd
from proctor.engine.skd import triples
from proctor.engine.skd.relations import RELATIONS
from proctor.v1 import common_pb2, teacher_pb2, teacher_pb2_grpc

SERVICE = "proctor.v1.Teacher"
_FINISH = {FinishReason.STOP: teacher_pb2.STOP, FinishReason.LENGTH: teacher_pb2.LENGTH}
# A text prompt longer than this is tokenized in a worker thread (a tokenizer takes ~1 s per MB), and one longer
# than MAX_CHARS_PER_TOKEN characters per allowed token is refused untokenized: no vocabulary's tokens are longer.
INLINE_TOKENIZE_CHARS = 4096
MAX_CHARS_PER_TOKEN = 64


def _long_text(prompt: common_pb2.Prompt) -> bool:
    return prompt.WhichOneof("input") == "text" and len(prompt.text) > INLINE_TOKENIZE_CHARS


@dataclass(frozen=True)
class TriplesJob:
    events: list[str]
    num_events: int
    relations: list[str]
    seed: int
    event_params: SamplingParams
    inference_params: SamplingParams
    cutoff: float | None
    skip_critic: bool


class TeacherService(teacher_pb2_grpc.TeacherServicer):
    def __init__(
        self, backend: Generator, config: TeacherConfig, svc: ServiceContext, critic: triples.Critic | None = None
    ) -> None:
        self.backend = backend
        self.critic = critic
        self.config = config
        self.svc = svc
        self._generate = StreamSpec(
            "Generate",
            self._generate_one,
            teacher_pb2.GenerateResult,
            "params.n, params.max_tokens or params.top_logprobs",
        )
        self._score = StreamSpec(
            "Score", self._score_one, teacher_pb2.ScoreResult, "top_logprobs, a shorter target or fewer continuations"
        )

    # ---- RPCs ------------------------------------------------------------------------------------------------

    async def Generate(
        self, request_iterator: AsyncIterator[teacher_pb2.GenerateRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[teacher_pb2.GenerateResult]:
        async for result in run_stream(self.svc, self._generate, request_iterator):
            yield result

    async def Score(
        self, request_iterator: AsyncIterator[teacher_pb2.ScoreRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[teacher_pb2.ScoreResult]:
        async for result in run_stream(self.svc, self._score, request_iterator):
            yield result

    async def GenerateTriples(
        self, request: teacher_pb2.TriplesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[teacher_pb2.TripleResult]:
        """One request, a stream of triples: recorded like every stream (CallMetrics), the call holding one slot
        of the service's queue and counting as one item in flight."""
        calls = CallMetrics(self.svc, "GenerateTriples")
        try:
            job = self._triples_job(request)
        except ItemError as exc:
            calls.call("INVALID_ARGUMENT")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
        if not job.skip_critic and self.critic is None:
            calls.call("FAILED_PRECONDITION")
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "no critic: host the Critic service here or set teacher.critic to a Critic's address; "
                "or set skip_critic",
            )
        if not self.svc.admission.try_acquire():
            calls.call("RESOURCE_EXHAUSTED")
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{self.svc.name} is at capacity; retry later")
        self.svc.inflight.inc()
        final = "CANCELLED"  # the call was cancelled or its deadline passed, unless we get to the end
        try:
            events, shortfall = job.events, ""
            if not events:
                pool = await triples.generate_events(self.backend, job.num_events, job.seed, job.event_params)
                events, shortfall = pool.events(), pool.shortfall()
            critic = None if job.skip_critic else self.critic
            names = self.config.skd_names
            for head in events:
                received = time.perf_counter()
                try:
                    found = await triples.triples_for_event(
                        self.backend, head, job.relations, job.seed, job.inference_params, critic, job.cutoff, names
                    )
                except ItemError as exc:  # this event fails; the next ones go on
                    calls.item(exc.code, received)
                    yield teacher_pb2.TripleResult(head=head, error=convert.status(exc))
                    continue
                for t in found:
                    calls.item("OK", received)
                    yield teacher_pb2.TripleResult(
                        head=t.head,
                        relation=convert.RELATION_ENUMS[t.relation],
                        tail=t.tail,
                        teacher_logprob=t.teacher_logprob,
                        critic_score=t.critic_score,
                        accepted=t.accepted,
                    )
            if shortfall:  # fewer events than asked: the stream ends saying exactly why
                error = ItemError(shortfall, "num_events", "FAILED_PRECONDITION")
                calls.item(error.code, time.perf_counter())
                yield teacher_pb2.TripleResult(error=convert.status(error))
            final = "OK"
        finally:
            calls.call(final)
            self.svc.inflight.dec()
            self.svc.admission.release()

    def _triples_job(self, r: teacher_pb2.TriplesRequest) -> TriplesJob:
        events = [e.strip() for e in r.events]
        for i, event in enumerate(events):
            if not event:
                raise ItemError("empty event", f"events[{i}]")
        if events and r.num_events:
            raise ItemError("give events or num_events, not both", "num_events")
        if not events and not r.num_events:
            raise ItemError("required: events to infer from, or num_events for the teacher to write", "events")
        limit = self.config.max_triples_events
        if max(len(events), r.num_events) > limit:
            raise ItemError(f"at most {limit} events per call (teacher.max_triples_events)", "events")
        relations = [convert.relation(v, f"relations[{i}]") for i, v in enumerate(r.relations)]
        cutoff = None
        if r.HasField("cutoff"):
            cutoff = convert.check_range(r.cutoff, "cutoff", 0.0, 1.0)
        return TriplesJob(
            events=events,
            num_events=r.num_events,
            relations=relations or list(RELATIONS),
            seed=r.seed if r.HasField("seed") else 0,
            event_params=self._sampling(r.event_params, 0, skd.EVENT_SAMPLING, "event_params"),
            inference_params=self._sampling(r.inference_params, 0, skd.INFERENCE_SAMPLING, "inference_params"),
            cutoff=cutoff,
            skip_critic=r.skip_critic,
        )

    async def Info(
        self, request: common_pb2.InfoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> common_pb2.ModelInfo:
        info = self.backend.info
        extra = {"eos_token_ids": ",".join(map(str, info.eos_token_ids))}
        return convert.model_info("Teacher", info, extra, self._max_prompt_tokens())

    # ---- items -----------------------------------------------------------------------------------------------

    def _generate_one(self, req: teacher_pb2.GenerateRequest) -> Coroutine[Any, Any, teacher_pb2.GenerateResult]:
        """Validated here, before the item takes a queue slot; a long text is tokenized off the loop after."""
        received = time.perf_counter()
        if _long_text(req.prompt):
            self._sampling(req.params, 0)  # every field but the prompt's length, now
            return self._generate_long(req, received)
        prompt = self._prompt_ids(req.prompt, "prompt", add_special_tokens=True)
        return self._generated(req, prompt, self._sampling(req.params, len(prompt)), received)

    async def _generate_long(self, req: teacher_pb2.GenerateRequest, received: float) -> teacher_pb2.GenerateResult:
        prompt = await asyncio.to_thread(self._prompt_ids, req.prompt, "prompt", True)
        return await self._generated(req, prompt, self._sampling(req.params, len(prompt)), received)

    async def _generated(
        self, req: teacher_pb2.GenerateRequest, prompt: list[int], params: SamplingParams, received: float
    ) -> teacher_pb2.GenerateResult:
        gen = await self.backend.generate(GenerateItem(prompt_ids=prompt, params=params))
        self.svc.metrics.count_tokens(
            self.svc.name, "Generate", prompt=len(prompt), generated=sum(len(s.token_ids) for s in gen.samples)
        )
        self.svc.metrics.observe_times(self.svc.name, "Generate", gen.queue_s, gen.inference_s)
        return teacher_pb2.GenerateResult(
            id=req.id,
            prompt_token_ids=gen.prompt_ids,
            completions=[
                teacher_pb2.Completion(
                    index=s.index,
                    token_ids=s.token_ids,
                    text=s.text,
                    finish_reason=_FINISH[s.finish_reason],
                    stop_reason=s.stop_reason,
                    logprobs=s.logprobs or [],
                    top=convert.top_k(s.top),
                    cumulative_logprob=s.cumulative_logprob,  # None (unset) when log-probs were not asked for
                )
                for s in gen.samples
            ],
            timing=convert.timing(gen.queue_s, gen.inference_s, time.perf_counter() - received),
        )

    def _score_one(self, req: teacher_pb2.ScoreRequest) -> Coroutine[Any, Any, teacher_pb2.ScoreResult]:
        """Validated here, before the item takes a queue slot; long texts are tokenized off the loop after."""
        received = time.perf_counter()
        check_top_logprobs(req.top_logprobs, "top_logprobs", self.config, self.backend.info)
        if req.continuations:
            if req.HasField("target"):
                raise ItemError("set target or continuations, not both", "target")
            if len(req.continuations) > self.config.max_group_size:
                raise ItemError(
                    f"{len(req.continuations)} > {self.config.max_group_size} (teacher.max_group_size)",
                    "continuations",
                )
        if any(_long_text(p) for p in (req.context, req.target, *req.continuations)):
            return self._score_long(req, received)
        return self._scored(req, self._score_inputs(req), received)

    async def _score_long(self, req: teacher_pb2.ScoreRequest, received: float) -> teacher_pb2.ScoreResult:
        return await self._scored(req, await asyncio.to_thread(self._score_inputs, req), received)

    def _score_inputs(self, req: teacher_pb2.ScoreRequest) -> tuple[list[int], list[list[int]]]:
        """The context's ids and the target's (one) or the continuations' (several), each checked to fit."""
        context = self._prompt_ids(req.context, "context", add_special_tokens=True)
        scored = [("target", req.target)] if not req.continuations else []
        scored += [(f"continuations[{i}]", p) for i, p in enumerate(req.continuations)]
        targets = []
        for field, prompt in scored:
            ids = self._prompt_ids(prompt, field, add_special_tokens=False)
            self._check_fits(context, ids, field)
            targets.append(ids)
        return context, targets

    async def _scored(
        self, req: teacher_pb2.ScoreRequest, inputs: tuple[list[int], list[list[int]]], received: float
    ) -> teacher_pb2.ScoreResult:
        context, targets = inputs
        self.svc.metrics.count_tokens(self.svc.name, "Score", prompt=len(context), scored=sum(len(t) for t in targets))
        if not req.continuations:
            (target,) = targets
            out = await self.backend.score(ScoreItem(context_ids=context, target_ids=target, top_k=req.top_logprobs))
            self.svc.metrics.observe_times(self.svc.name, "Score", out.queue_s, out.inference_s)
            return teacher_pb2.ScoreResult(
                id=req.id,
                target_token_ids=target,
                logprobs=out.logprobs,
                top=convert.top_k(out.top),
                context_tokens=len(context),
                timing=convert.timing(out.queue_s, out.inference_s, time.perf_counter() - received),
            )
        group = await self.backend.score_group(
            ScoreGroupItem(context_ids=context, continuations=targets, top_k=req.top_logprobs)
        )
        self.svc.metrics.observe_times(self.svc.name, "Score", group.queue_s, group.inference_s)
        return teacher_pb2.ScoreResult(
            id=req.id,
            context_tokens=len(context),
            continuations=[
                teacher_pb2.TokenScores(token_ids=ids, logprobs=s.logprobs, top=convert.top_k(s.top))
                for ids, s in zip(targets, group.scores, strict=True)
            ],
            timing=convert.timing(group.queue_s, group.inference_s, time.perf_counter() - received),
        )

    def _check_fits(self, context: list[int], target: list[int], field: str) -> None:
        limit = self.backend.info.max_model_len
        if len(context) + len(target) > limit:
            raise ItemError(
                f"context ({len(context)} tokens) + target ({len(target)} tokens) exceeds the model's context length "
                f"{limit}; nothing is truncated",
                field,
            )

    # ---- validation ------------------------------------------------------------------------------------------

    def _max_prompt_tokens(self) -> int:
        model_len = self.backend.info.max_model_len
        return min(self.config.max_prompt_tokens, model_len) if self.config.max_prompt_tokens else model_len

    def _prompt_ids(self, prompt: common_pb2.Prompt, field: str, add_special_tokens: bool) -> list[int]:
        which = prompt.WhichOneof("input")
        if which is None:
            raise ItemError("required: set text or token_ids", field)
        if which == "text":
            if not prompt.text:
                raise ItemError("empty text", f"{field}.text")
            bound = self._max_prompt_tokens() * MAX_CHARS_PER_TOKEN
            if len(prompt.text) > bound:  # refused before any tokenizer work: that is what bounds it
                raise ItemError(
                    f"{len(prompt.text)} characters cannot fit max_prompt_tokens {self._max_prompt_tokens()} "
                    f"(at most {bound} characters, {MAX_CHARS_PER_TOKEN} a token); nothing is truncated",
                    f"{field}.text",
                )
            ids = self.backend.tokenize(prompt.text, add_special_tokens)
        else:
            ids = convert.token_ids(list(prompt.token_ids.ids), f"{field}.token_ids.ids", self.backend.info.vocab_size)
        if not ids:
            raise ItemError("empty: needs at least one token", field)
        limit = self._max_prompt_tokens()
        if len(ids) > limit:
            raise ItemError(f"{len(ids)} tokens > max_prompt_tokens {limit}; nothing is truncated", field)
        return ids

    def _sampling(
        self, p: teacher_pb2.SamplingParams, prompt_len: int, base: SamplingParams | None = None, at: str = "params"
    ) -> SamplingParams:
        """The request's fields over `base` (a field left at its proto default keeps the base value), checked."""
        base = base or SamplingParams(max_tokens=self.config.default_max_tokens)
        top_logprobs = p.top_logprobs or base.top_logprobs
        params = SamplingParams(
            n=p.n or base.n,
            temperature=p.temperature if p.HasField("temperature") else base.temperature,
            top_p=p.top_p if p.HasField("top_p") else base.top_p,
            top_k=p.top_k or base.top_k,
            presence_penalty=p.presence_penalty or base.presence_penalty,
            frequency_penalty=p.frequency_penalty or base.frequency_penalty,
            seed=p.seed if p.HasField("seed") else base.seed,
            max_tokens=p.max_tokens or base.max_tokens,
            stop=tuple(p.stop) or base.stop,
            stop_token_ids=tuple(p.stop_token_ids) or base.stop_token_ids,
            logprobs=p.logprobs or base.logprobs or top_logprobs > 0,
            top_logprobs=top_logprobs,
            ignore_eos=p.ignore_eos or base.ignore_eos,
            detokenize=base.detokenize and not p.skip_detokenize,
        )
        return checked_sampling(params, prompt_len=prompt_len, config=self.config, info=self.backend.info, at=at)
