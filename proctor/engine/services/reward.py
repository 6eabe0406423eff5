"""The RewardModel service: Reward (stream) and Info, over the Atom-Searcher reward of `engine.reward`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from proctor.engine.backends.base import Generator
from proctor.engine.errors import ItemError
from proctor.engine.rewards.pipeline import PendingJudgement, RewardMode, RewardOutcome, RewardScorer, RolloutInput
from proctor.engine.rewards.steps import StepRun
from proctor.engine.services import convert
from proctor.engine.services.streams import ServiceContext, StreamSpec, run_batched_stream, run_stream
from proctor.v1 import common_pb2, reward_pb2, reward_pb2_grpc

SERVICE = "proctor.v1.RewardModel"
_MODES = {
    reward_pb2.RRM_MODE_UNSPECIFIED: None,
    reward_pb2.GENERATE: RewardMode.GENERATE,
    reward_pb2.EXPECTED: RewardMode.EXPECTED,
    reward_pb2.RULES: RewardMode.RULES,
}
_ATOM_DETAILS = frozenset(reward_pb2.AtomDetail.values())
# The rules on a longer rollout run in a worker thread: they are linear in its length, but tag soup costs about
# 0.3 us a character, and neither Health nor any other call may wait on that. One thread: the rules are pure
# Python and hold the GIL, so more threads would not run them faster, only take the GIL from the event loop more.
RULES_INLINE_CHARS = 16 * 1024
_RULES_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="proctor-rules")


def rollout_input(req: reward_pb2.RewardRequest) -> RolloutInput:
    """The domain's view of a request; a bad field is an ItemError naming it."""
    if req.mode not in _MODES:
        raise ItemError(f"unknown mode {req.mode}", "mode")
    # An empty response or gold list is a rollout to score by the rule (-1 / R_f1 0), not a bad request.
    run = None
    if req.HasField("run"):
        run = StepRun(req.run.key, req.run.rollouts_per_step, req.run.observe_only)
    # An unset step is derived from the run; without a run it is the field's default, 0.
    step = req.training_step if req.HasField("training_step") or run is None else None
    return RolloutInput(
        question=req.question,
        response=req.response,
        golds=list(req.gold_answers),
        step=step,
        total_steps=req.total_steps if req.HasField("total_steps") else None,
        mode=_MODES[req.mode],
        run=run,
    )


class RewardService(reward_pb2_grpc.RewardModelServicer):
    def __init__(self, scorer: RewardScorer, judge: Generator | None, svc: ServiceContext) -> None:
        self.scorer = scorer
        self.judge = judge
        self.svc = svc
        shrink = "atom_detail ATOM_DETAIL_NO_TEXT or ATOM_DETAIL_NONE, return_rrm_text false"
        self._reward = StreamSpec("Reward", self._reward_one, reward_pb2.RewardResult, shrink)
        self._reward_batched = StreamSpec("RewardBatched", self._reward_one, reward_pb2.RewardResult, shrink)
        self._inference_seconds = svc.metrics.inference_seconds.labels(svc.name, "Reward")

    async def Reward(
        self, request_iterator: AsyncIterator[reward_pb2.RewardRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[reward_pb2.RewardResult]:
        async for result in run_stream(self.svc, self._reward, request_iterator):
            yield result

    async def RewardBatched(
        self, request_iterator: AsyncIterator[reward_pb2.RewardBatch], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[reward_pb2.RewardResults]:
        results = reward_pb2.RewardResults
        async for message in run_batched_stream(self.svc, self._reward_batched, request_iterator, results):
            yield message

    async def Info(
        self, request: common_pb2.InfoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> common_pb2.ModelInfo:
        settings = self.scorer.settings
        extra = {"mode": settings.mode, "aggregation": settings.aggregation, "total_steps": str(settings.total_steps)}
        return convert.model_info("RewardModel", self.judge.info if self.judge else None, extra)

    def _reward_one(
        self, req: reward_pb2.RewardRequest
    ) -> reward_pb2.RewardResult | Coroutine[Any, Any, reward_pb2.RewardResult]:
        """The rules at once, on the event loop (they never wait on the model), unless the rollout is long; the
        RRM's part as a coroutine."""
        received = time.perf_counter()
        if len(req.response) > RULES_INLINE_CHARS:
            return self._off_loop(req, received)
        decided = self._rules(req, received)
        if isinstance(decided, PendingJudgement):
            return self._judged(req, decided, received)
        return decided

    def _rules(self, req: reward_pb2.RewardRequest, received: float) -> reward_pb2.RewardResult | PendingJudgement:
        if req.atom_detail not in _ATOM_DETAILS:
            raise ItemError(f"unknown atom_detail {req.atom_detail}", "atom_detail")
        decided = self.scorer.apply_rules(rollout_input(req))
        if isinstance(decided, PendingJudgement):
            return decided
        return self._result(req, decided, received)

    async def _off_loop(self, req: reward_pb2.RewardRequest, received: float) -> reward_pb2.RewardResult:
        decided = await asyncio.get_running_loop().run_in_executor(_RULES_THREAD, self._rules, req, received)
        if isinstance(decided, PendingJudgement):
            return await self._judged(req, decided, received)
        return decided

    async def _judged(
        self, req: reward_pb2.RewardRequest, pending: PendingJudgement, received: float
    ) -> reward_pb2.RewardResult:
        out = await self.scorer.judge_atoms(pending)
        rpc = self._reward.rpc  # both RPCs share one judge; its series are labelled Reward
        metrics, name = self.svc.metrics, self.svc.name
        self._inference_seconds.observe(out.inference_s)
        metrics.queue_seconds.labels(name, rpc).observe(out.queue_s)
        metrics.count_tokens(
            name, rpc, prompt=out.prompt_tokens, generated=out.generated_tokens, scored=out.scored_tokens
        )
        return self._result(req, out, received)

    def _result(self, req: reward_pb2.RewardRequest, out: RewardOutcome, received: float) -> reward_pb2.RewardResult:
        result = reward_pb2.RewardResult(
            id=req.id,
            reward=out.reward,
            alpha=out.alpha,
            r_f1=out.r_f1,
            r_atom=out.r_atom,
            format_ok=out.format_ok,
            format_reason=out.format_reason,
            no_atoms=out.no_atoms,
            atom_count=len(out.atoms),
            training_step=out.training_step,
            rrm_text=out.rrm_text if req.return_rrm_text else "",
            rrm_attempts=out.rrm_attempts,
            timing=convert.timing(out.queue_s, out.inference_s, time.perf_counter() - received),
        )
        detail = req.atom_detail
        if detail != reward_pb2.ATOM_DETAIL_NONE:
            add = result.atoms.add  # built in place: no Atom message to copy into the result
            scores: list[float | None] = list(out.atom_scores) or [None] * len(out.atoms)
            with_text = detail == reward_pb2.ATOM_DETAIL_FULL
            for a, score in zip(out.atoms, scores, strict=True):
                add(type=a.type, text=a.text if with_text else "", turn=a.turn, score=score)
        return result
