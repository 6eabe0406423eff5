"""The RewardModel over gRPC: Reward, RewardBatched and Info, converted to and from the RewardModel's core."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import grpc

from proctor.engine.cores.context import Later
from proctor.engine.cores.reward import RewardCore
from proctor.engine.doors.grpc import convert
from proctor.engine.doors.grpc.streams import StreamSpec, run_batched_stream, run_stream
from proctor.engine.errors import ItemError
from proctor.engine.rewards.pipeline import RewardMode, RewardOutcome, RolloutInput
from proctor.engine.rewards.steps import StepRun
from proctor.v1 import common_pb2, reward_pb2, reward_pb2_grpc

_MODES = {
    reward_pb2.RRM_MODE_UNSPECIFIED: None,
    reward_pb2.GENERATE: RewardMode.GENERATE,
    reward_pb2.EXPECTED: RewardMode.EXPECTED,
    reward_pb2.RULES: RewardMode.RULES,
}
_ATOM_DETAILS = frozenset(reward_pb2.AtomDetail.values())


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
    def __init__(self, core: RewardCore) -> None:
        self.core = core
        self.svc = core.svc
        shrink = "atom_detail ATOM_DETAIL_NO_TEXT or ATOM_DETAIL_NONE, return_rrm_text false"
        self._reward = StreamSpec("Reward", self._reward_one, reward_pb2.RewardResult, shrink)
        self._reward_batched = StreamSpec("RewardBatched", self._reward_one, reward_pb2.RewardResult, shrink)

    async def Reward(  # type: ignore[override]  # encoded replies (streams.py)
        self, request_iterator: AsyncIterator[reward_pb2.RewardRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        async for result in run_stream(self.svc, self._reward, request_iterator):
            yield result

    async def RewardBatched(  # type: ignore[override]  # encoded replies (streams.py)
        self, request_iterator: AsyncIterator[reward_pb2.RewardBatch], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        async for message in run_batched_stream(self.svc, self._reward_batched, request_iterator):
            yield message

    async def Info(
        self, request: common_pb2.InfoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> common_pb2.ModelInfo:
        settings = self.core.scorer.settings
        extra = {"mode": settings.mode, "aggregation": settings.aggregation, "total_steps": str(settings.total_steps)}
        judge = self.core.judge
        return convert.model_info("RewardModel", judge.info if judge else None, extra)

    def _reward_one(
        self, req: reward_pb2.RewardRequest
    ) -> reward_pb2.RewardResult | Coroutine[Any, Any, reward_pb2.RewardResult]:
        """The result at once when the core decides the reward inline; else a coroutine."""
        received = time.perf_counter()
        try:
            if req.atom_detail not in _ATOM_DETAILS:
                raise ItemError(f"unknown atom_detail {req.atom_detail}", "atom_detail")
            item = rollout_input(req)
        except ItemError as refused:
            if req.HasField("run") and not req.HasField("training_step"):
                return self._counted_refusal(req, refused)
            raise
        decided = self.core.reward(item)
        if isinstance(decided, Later):
            return self._later(req, decided, received)
        return self._result(req, decided, received)

    async def _counted_refusal(self, req: reward_pb2.RewardRequest, refused: ItemError) -> reward_pb2.RewardResult:
        """A rollout of a counted run that this door cannot read still counts toward its step (the trainer sent
        it), as on the HTTP routes; then it fails with its own error."""
        await self.core.count_unscored(StepRun(req.run.key, req.run.rollouts_per_step, req.run.observe_only))
        raise refused

    async def _later(
        self, req: reward_pb2.RewardRequest, outcome: Later[RewardOutcome], received: float
    ) -> reward_pb2.RewardResult:
        return self._result(req, await outcome.run(), received)

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
        )
        convert.fill_timing(result.timing, out.queue_s, out.inference_s, time.perf_counter() - received)
        detail = req.atom_detail
        if detail != reward_pb2.ATOM_DETAIL_NONE:
            add = result.atoms.add  # built in place: no Atom message to copy into the result
            scores: list[float | None] = list(out.atom_scores) or [None] * len(out.atoms)
            with_text = detail == reward_pb2.ATOM_DETAIL_FULL
            for a, score in zip(out.atoms, scores, strict=True):
                add(type=a.type, text=a.text if with_text else "", turn=a.turn, score=score)
        return result
