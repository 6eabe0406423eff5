"""The Teacher over gRPC: Generate, Score, GenerateTriples and Info, converted to and from the Teacher's core."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import grpc

from proctor.engine.cores.context import CallMetrics, Later
from proctor.engine.cores.teacher import EventFailed, PromptInput, TeacherCore, TriplesJob
from proctor.engine.doors.grpc import convert
from proctor.engine.doors.grpc.streams import StreamSpec, run_batched_stream, run_stream
from proctor.engine.errors import ItemError
from proctor.engine.items import FinishReason, SamplingParams
from proctor.engine.skd import prompts as skd
from proctor.v1 import common_pb2, teacher_pb2, teacher_pb2_grpc

_FINISH = {FinishReason.STOP: teacher_pb2.STOP, FinishReason.LENGTH: teacher_pb2.LENGTH}


def prompt_input(prompt: common_pb2.Prompt, field: str) -> PromptInput:
    which = prompt.WhichOneof("input")
    if which is None:
        raise ItemError("required: set text or token_ids", field)
    if which == "text":
        return PromptInput(text=prompt.text, field=field, text_field=f"{field}.text")
    # A slice is the repeated field's ids as a list, a third cheaper than list() on it.
    return PromptInput(ids=prompt.token_ids.ids[:], field=field, ids_field=f"{field}.token_ids.ids")


class TeacherService(teacher_pb2_grpc.TeacherServicer):
    def __init__(self, core: TeacherCore) -> None:
        self.core = core
        self.svc = core.svc
        self._generate = StreamSpec(
            "Generate",
            self._generate_one,
            teacher_pb2.GenerateResult,
            "params.n, params.max_tokens or params.top_logprobs",
        )
        shrink = "top_logprobs, probes, a shorter target or fewer continuations"
        self._score = StreamSpec("Score", self._score_one, teacher_pb2.ScoreResult, shrink)
        self._score_batched = StreamSpec("ScoreBatched", self._score_one, teacher_pb2.ScoreResult, shrink)

    # ---- RPCs ------------------------------------------------------------------------------------------------

    async def Generate(  # type: ignore[override]  # encoded replies (streams.py)
        self, request_iterator: AsyncIterator[teacher_pb2.GenerateRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        async for result in run_stream(self.svc, self._generate, request_iterator):
            yield result

    async def Score(  # type: ignore[override]  # encoded replies (streams.py)
        self, request_iterator: AsyncIterator[teacher_pb2.ScoreRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        async for result in run_stream(self.svc, self._score, request_iterator):
            yield result

    async def ScoreBatched(  # type: ignore[override]  # encoded replies (streams.py)
        self, request_iterator: AsyncIterator[teacher_pb2.ScoreBatch], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        async for message in run_batched_stream(self.svc, self._score_batched, request_iterator):
            yield message

    async def GenerateTriples(
        self, request: teacher_pb2.TriplesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[teacher_pb2.TripleResult]:
        """One request, a stream of triples: recorded like every stream (CallMetrics), the call holding one slot
        of the service's queue and counting as one item in flight."""
        calls = CallMetrics(self.svc, "GenerateTriples")
        try:
            job = self._triples_job(request)
        except ItemError as exc:
            calls.call(exc.code)
            await context.abort(grpc.StatusCode[exc.code], exc.message)
        final = "CANCELLED"  # the call was cancelled or its deadline passed, unless we get to the end
        try:
            with self.svc.admitted(1):  # the call holds one slot of the queue and counts as one item in flight
                async for found in self.core.triples(job, calls):
                    if isinstance(found, EventFailed):
                        yield teacher_pb2.TripleResult(head=found.head, error=convert.status(found.error))
                        continue
                    yield teacher_pb2.TripleResult(
                        head=found.head,
                        relation=convert.RELATION_ENUMS[found.relation],
                        tail=found.tail,
                        teacher_logprob=found.teacher_logprob,
                        critic_score=found.critic_score,
                        accepted=found.accepted,
                    )
            final = "OK"
        except ItemError as exc:  # the queue is full, or the teacher could not write the events
            final = exc.code
            await context.abort(grpc.StatusCode[exc.code], exc.message)
        except Exception:
            final = "UNKNOWN"  # what gRPC answers a servicer's exception with
            raise
        finally:
            calls.call(final)

    def _triples_job(self, r: teacher_pb2.TriplesRequest) -> TriplesJob:
        return self.core.triples_job(
            events=list(r.events),
            num_events=r.num_events,
            relations=[convert.relation(v, f"relations[{i}]") for i, v in enumerate(r.relations)],
            seed=r.seed if r.HasField("seed") else 0,
            event_params=self._sampling(r.event_params, 0, skd.EVENT_SAMPLING, "event_params"),
            inference_params=self._sampling(r.inference_params, 0, skd.INFERENCE_SAMPLING, "inference_params"),
            cutoff=r.cutoff if r.HasField("cutoff") else None,
            skip_critic=r.skip_critic,
        )

    async def Info(
        self, request: common_pb2.InfoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> common_pb2.ModelInfo:
        info = self.core.info
        extra = {"eos_token_ids": ",".join(map(str, info.eos_token_ids))}
        return convert.model_info("Teacher", info, extra, self.core.max_prompt_tokens)

    # ---- items -----------------------------------------------------------------------------------------------

    def _generate_one(self, req: teacher_pb2.GenerateRequest) -> Coroutine[Any, Any, teacher_pb2.GenerateResult]:
        """Checked here, before the item takes a queue slot; a long text is tokenized off the loop after."""
        received = time.perf_counter()
        prompt = prompt_input(req.prompt, "prompt")
        ids = self.core.tokenized(lambda: self.core.prompt_ids(prompt, add_special_tokens=True), prompt)
        if isinstance(ids, Later):
            self._sampling(req.params, 0)  # every field but the prompt's length, now
            return self._generate_later(req, ids, received)
        return self._generated(req, ids, self._sampling(req.params, len(ids)), received)

    async def _generate_later(
        self, req: teacher_pb2.GenerateRequest, ids: Later[list[int]], received: float
    ) -> teacher_pb2.GenerateResult:
        prompt = await ids.run()
        return await self._generated(req, prompt, self._sampling(req.params, len(prompt)), received)

    async def _generated(
        self, req: teacher_pb2.GenerateRequest, prompt: list[int], params: SamplingParams, received: float
    ) -> teacher_pb2.GenerateResult:
        gen = await self.core.generate(prompt, params)
        result = teacher_pb2.GenerateResult(id=req.id, prompt_token_ids=gen.prompt_ids)
        for s in gen.samples:
            completion = result.completions.add(  # in place: a Completion built apart would be copied in
                index=s.index,
                token_ids=s.token_ids,
                text=s.text,
                finish_reason=_FINISH[s.finish_reason],
                stop_reason=s.stop_reason,
                logprobs=s.logprobs or [],
                cumulative_logprob=s.cumulative_logprob,  # None (unset) when log-probs were not asked for
            )
            convert.fill_top_k(completion.top, s.top)
        convert.fill_timing(result.timing, gen.queue_s, gen.inference_s, time.perf_counter() - received)
        return result

    def _score_one(self, req: teacher_pb2.ScoreRequest) -> Coroutine[Any, Any, teacher_pb2.ScoreResult]:
        """Checked here, before the item takes a queue slot; long texts are tokenized off the loop after."""
        received = time.perf_counter()
        self.core.check_top(req.top_logprobs, "top_logprobs")
        continuations = req.continuations  # read once: each read of a field builds its wrapper anew
        if continuations:  # (a group's checks; a lone target has none)
            self.core.check_group(len(continuations), req.HasField("target"), bool(req.probes))
        context = prompt_input(req.context, "context")
        if continuations:
            scored = [prompt_input(p, f"continuations[{i}]") for i, p in enumerate(continuations)]
        else:
            scored = [prompt_input(req.target, "target")]
        inputs = self.core.tokenized(lambda: self.core.score_inputs(context, scored), context, *scored)
        if isinstance(inputs, Later):
            return self._score_later(req, inputs, received)
        return self._scored(req, inputs, received)

    async def _score_later(
        self, req: teacher_pb2.ScoreRequest, inputs: Later[tuple[list[int], list[list[int]]]], received: float
    ) -> teacher_pb2.ScoreResult:
        return await self._scored(req, await inputs.run(), received)

    async def _scored(
        self, req: teacher_pb2.ScoreRequest, inputs: tuple[list[int], list[list[int]]], received: float
    ) -> teacher_pb2.ScoreResult:
        context, targets = inputs
        if not req.continuations:
            (target,) = targets
            probes = convert.probe_rows(req.probes)
            out = await self.core.score(context, target, req.top_logprobs, probes=probes)
            result = teacher_pb2.ScoreResult(
                id=req.id,
                target_token_ids=target,
                logprobs=out.logprobs,
                context_tokens=len(context),
                probe_logprobs=convert.flat(out.probe_logprobs),
            )
            convert.fill_top_k(result.top, out.top)
            convert.fill_timing(result.timing, out.queue_s, out.inference_s, time.perf_counter() - received)
            return result
        group = await self.core.score_group(context, targets, req.top_logprobs)
        result = teacher_pb2.ScoreResult(id=req.id, context_tokens=len(context))
        for ids, s in zip(targets, group.scores, strict=True):
            convert.fill_top_k(result.continuations.add(token_ids=ids, logprobs=s.logprobs).top, s.top)
        convert.fill_timing(result.timing, group.queue_s, group.inference_s, time.perf_counter() - received)
        return result

    def _sampling(
        self, p: teacher_pb2.SamplingParams, prompt_len: int, base: SamplingParams | None = None, at: str = "params"
    ) -> SamplingParams:
        """The request's fields over `base` (a field left at its proto default keeps the base value), checked."""
        base = base or SamplingParams(max_tokens=self.core.config.default_max_tokens)
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
        return self.core.sampling(params, prompt_len, at=at)
