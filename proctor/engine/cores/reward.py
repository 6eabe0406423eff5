"""The RewardModel's core: a rollout's reward by the rules, then by the RRM where the mode asks for it, with where
each part runs decided once for every door (gRPC's Reward and RewardBatched, the HTTP reward routes).

The rules never wait on the model, so a short rollout's rule reward is answered at once, on the event loop, with no
task and no queue slot. The rules on a longer rollout run in one worker thread: they are linear in its length, but
tag soup costs about 0.3 us a character, and neither Health nor any other call may wait on that. One thread: the
rules are pure Python and hold the GIL, so more threads would not run them faster, only take the GIL from the
event loop more often.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from proctor.engine.backends.base import Generator
from proctor.engine.cores.context import Later, ServiceContext
from proctor.engine.rewards.pipeline import PendingJudgement, RewardOutcome, RewardScorer, RolloutInput
from proctor.engine.rewards.steps import StepRun

T = TypeVar("T")

RULES_INLINE_CHARS = 16 * 1024
_RULES_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="proctor-rules")


async def off_loop(work: Callable[..., T], *args: Any) -> T:
    """`work(*args)` on the rules' one worker thread: for any rule-side text work too long for the event loop."""
    return await asyncio.get_running_loop().run_in_executor(_RULES_THREAD, work, *args)


class RewardCore:
    def __init__(self, scorer: RewardScorer, judge: Generator | None, svc: ServiceContext) -> None:
        self.scorer = scorer
        self.judge = judge
        self.svc = svc
        # Every door's RRM work is recorded under one series, labelled Reward.
        self._queue_seconds = svc.metrics.queue_seconds.labels(svc.name, "Reward")
        self._inference_seconds = svc.metrics.inference_seconds.labels(svc.name, "Reward")

    def reward(self, item: RolloutInput) -> RewardOutcome | Later[RewardOutcome]:
        """The outcome at once when the rules decide it inline; else a `Later` that computes it (the rules off the
        loop for a long rollout, then the RRM where the mode needs it). A bad item raises ItemError now."""
        # A long rollout's rules, or a count that may wait on a file lock or the network, run off the loop.
        if len(item.response) > RULES_INLINE_CHARS or (item.step is None and self.scorer.steps.waits):
            return Later(lambda: self._off_loop(item))
        decided = self.scorer.apply_rules(item)
        if isinstance(decided, PendingJudgement):
            return Later(lambda: self._judged(decided))
        return decided

    async def count_unscored(self, run: StepRun) -> None:
        """A rollout of `run` that could not be scored (the door could not read it) still counts toward its step:
        the trainer sent it."""
        if self.scorer.steps.waits:
            await off_loop(self.scorer.steps.step, run)
        else:
            self.scorer.steps.step(run)

    async def _off_loop(self, item: RolloutInput) -> RewardOutcome:
        decided = await off_loop(self.scorer.apply_rules, item)
        if isinstance(decided, PendingJudgement):
            return await self._judged(decided)
        return decided

    async def _judged(self, pending: PendingJudgement) -> RewardOutcome:
        out = await self.scorer.judge_atoms(pending)
        self._inference_seconds.observe(out.inference_s)
        self._queue_seconds.observe(out.queue_s)
        self.svc.metrics.count_tokens(
            self.svc.name, "Reward", prompt=out.prompt_tokens, generated=out.generated_tokens, scored=out.scored_tokens
        )
        return out
