"""RewardModel clients: one stream per training step (a GRPO step of 256 x 16 rollouts is one call)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from proctor.clients.streaming import AsyncClient, SyncClient, run_async, run_sync
from proctor.v1 import reward_pb2, reward_pb2_grpc

MODES = {
    "generate": reward_pb2.GENERATE,
    "expected": reward_pb2.EXPECTED,
    "rules": reward_pb2.RULES,
    None: reward_pb2.RRM_MODE_UNSPECIFIED,
}
ATOM_DETAILS = {
    "full": reward_pb2.ATOM_DETAIL_FULL,
    "no_text": reward_pb2.ATOM_DETAIL_NO_TEXT,
    "none": reward_pb2.ATOM_DETAIL_NONE,
}


def gold_list(golds: str | Sequence[str] | None) -> list[str]:
    """A dataset's gold answer(s) as the request's list: one string, a list of them, or none (None, "" or []).
    Empty golds are sent as they are: the server scores them by the rule (R_f1 = 0), it does not refuse them."""
    if golds is None:
        return []
    return [golds] if isinstance(golds, str) else [str(g) for g in golds]


def reward_request(
    id: str,
    question: str,
    response: str,
    golds: str | Sequence[str] | None,
    training_step: int | None,
    *,
    total_steps: int | None = None,
    run: str | None = None,
    rollouts_per_step: int = 0,
    observe_only: bool = False,
    mode: str | None = None,
    return_rrm_text: bool = False,
    atoms: str = "full",
    timeout_ms: int = 0,
) -> reward_pb2.RewardRequest:
    """`mode` is generate, expected, rules or None (the server's default). `atoms`: full (type, text, turn, score),
    no_text, or none (the result's atom_count only; what a trainer that wants the reward alone should ask).

    `training_step` None: the server derives T by counting the rollouts of `run` (`rollouts_per_step` of them a
    step; 0 = the server's reward.steps.rollouts_per_step); `observe_only` takes its T without counting (validation).
    A step given always wins."""
    request = reward_pb2.RewardRequest(
        id=id,
        question=question,
        response=response,
        gold_answers=gold_list(golds),
        training_step=training_step,
        run=reward_pb2.StepRun(key=run, rollouts_per_step=rollouts_per_step, observe_only=observe_only)
        if run is not None
        else None,
        mode=MODES[mode],
        return_rrm_text=return_rrm_text,
        atom_detail=ATOM_DETAILS[atoms],
        timeout_ms=timeout_ms,
    )
    if total_steps is not None:
        request.total_steps = total_steps
    return request


def _rpc(stub: Any, batch_size: int) -> tuple[Any, type[reward_pb2.RewardBatch] | None]:
    """The method to call and its batch message: RewardBatched for batch_size > 0, else Reward."""
    return (stub.RewardBatched, reward_pb2.RewardBatch) if batch_size > 0 else (stub.Reward, None)


class RewardClient(SyncClient):
    """Blocking RewardModel client (one channel; safe to share across threads)."""

    def __init__(self, target: str, **options: Any) -> None:
        """`options`: timeout_s, credentials (TLS / mTLS / bearer token), max_message_bytes."""
        super().__init__(target, **options)
        self.stub = reward_pb2_grpc.RewardModelStub(self.channel)

    def reward(
        self, requests: Iterable[reward_pb2.RewardRequest], batch_size: int = 256
    ) -> dict[str, reward_pb2.RewardResult]:
        """One call for all requests, `batch_size` per message (RewardBatched); 0 = one per message (Reward)."""
        method, batch = _rpc(self.stub, batch_size)
        return run_sync(self, reward_pb2.RewardResult, method, list(requests), batch, batch_size)


class AsyncRewardClient(AsyncClient):
    """asyncio RewardModel client; create it inside the running loop."""

    def __init__(self, target: str, **options: Any) -> None:
        super().__init__(target, **options)
        self.stub = reward_pb2_grpc.RewardModelStub(self.channel)

    async def reward(
        self, requests: Iterable[reward_pb2.RewardRequest], batch_size: int = 256
    ) -> dict[str, reward_pb2.RewardResult]:
        """See RewardClient.reward."""
        method, batch = _rpc(self.stub, batch_size)
        return await run_async(self, reward_pb2.RewardResult, method, list(requests), batch, batch_size)
