"""TRL GRPO reward functions backed by a proctor RewardModel.

    from proctor.clients.trl import ProctorReward
    trainer = GRPOTrainer(..., reward_funcs=[ProctorReward("rm-host:50051", gold_column="answer")])

TRL calls `reward_func(prompts=..., completions=..., completion_ids=..., trainer_state=..., **dataset_columns)`
once per step with every completion of the step; this sends them all on one stream. T is
`trainer_state.global_step` (0 on the first step) and T_MAX `trainer_state.max_steps - 1` (the last step's T, so
α reaches 0 on it) unless `total_steps` is given. Where TRL passes `log_metric` (TRL ≥ 0.2x), the step's means
of the reward's parts are logged beside TRL's own metrics: `proctor/alpha`, `proctor/r_f1`, `proctor/format_ok`,
`proctor/training_step`. Conversational
prompts and completions (lists of {"role", "content"}) are flattened to the last user turn / the assistant text.
A rollout the server could not score raises (`on_error="raise"`) or becomes None (`on_error="none"`; TRL ignores
None rewards for that function), never a made-up number.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from proctor.clients.reward import AsyncRewardClient, RewardClient, reward_request
from proctor.clients.streaming import ItemFailed
from proctor.v1 import reward_pb2


def _text(value: Any, role: str) -> str:
    if isinstance(value, str):
        return value
    turns = [m.get("content", "") for m in value if m.get("role") == role]  # conversational format
    return str(turns[-1] if role == "user" and turns else "".join(turns))


class _Base:
    def __init__(
        self,
        gold_column: str = "answer",
        total_steps: int | None = None,
        mode: str | None = None,
        on_error: str = "raise",
    ) -> None:
        if on_error not in ("raise", "none"):
            raise ValueError("on_error must be 'raise' or 'none'")
        self.gold_column = gold_column
        self.total_steps = total_steps
        self.mode = mode
        self.on_error = on_error
        self.__name__ = "proctor_reward"  # TRL logs each reward function under its __name__

    def _requests(
        self, prompts: Sequence[Any], completions: Sequence[Any], trainer_state: Any, kwargs: dict[str, Any]
    ) -> list[reward_pb2.RewardRequest]:
        if self.gold_column not in kwargs:
            raise KeyError(f"the dataset has no column {self.gold_column!r} with the gold answers (gold_column)")
        golds = kwargs[self.gold_column]
        step = int(getattr(trainer_state, "global_step", 0)) if trainer_state is not None else 0
        total = self.total_steps
        max_steps = getattr(trainer_state, "max_steps", None)
        if total is None and max_steps:
            total = max(int(max_steps) - 1, 1)
        batch = uuid.uuid4().hex[:8]
        return [
            reward_request(
                f"{batch}-{i}",
                _text(prompt, "user"),
                _text(completion, "assistant"),
                gold,
                step,
                total_steps=total,
                mode=self.mode,
                atoms="none",  # TRL takes the reward alone
            )
            for i, (prompt, completion, gold) in enumerate(zip(prompts, completions, golds, strict=True))
        ]

    def _rewards(
        self,
        requests: list[reward_pb2.RewardRequest],
        results: dict[str, reward_pb2.RewardResult],
        kwargs: dict[str, Any],
    ) -> list[float | None]:
        out: list[float | None] = []
        scored: list[reward_pb2.RewardResult] = []
        for request in requests:
            result = results[request.id]
            if result.HasField("error"):
                if self.on_error == "raise":
                    raise ItemFailed(request.id, result.error)
                out.append(None)
            else:
                out.append(result.reward)
                scored.append(result)
        log_metric = kwargs.get("log_metric")
        if callable(log_metric) and scored:
            for name in ("alpha", "r_f1", "format_ok", "training_step"):
                log_metric(f"proctor/{name}", sum(float(getattr(r, name)) for r in scored) / len(scored))
        return out


class ProctorReward(_Base):
    """A synchronous TRL reward function: `f(prompts, completions, **kwargs) -> list[float]`."""

    def __init__(self, target: str, *, timeout_s: float | None = 600, **options: Any) -> None:
        super().__init__(**options)
        self.client = RewardClient(target, timeout_s=timeout_s)

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], trainer_state: Any = None, **kwargs: Any
    ) -> list[float | None]:
        requests = self._requests(prompts, completions, trainer_state, kwargs)
        return self._rewards(requests, self.client.reward(requests), kwargs)


class AsyncProctorReward(_Base):
    """An async TRL reward function (TRL runs async reward functions concurrently with the others)."""

    def __init__(self, target: str, *, timeout_s: float | None = 600, **options: Any) -> None:
        super().__init__(**options)
        self.target = target
        self.timeout_s = timeout_s

    async def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], trainer_state: Any = None, **kwargs: Any
    ) -> list[float | None]:
        requests = self._requests(prompts, completions, trainer_state, kwargs)
        # A channel per call: TRL may drive each call from its own event loop.
        async with AsyncRewardClient(self.target, timeout_s=self.timeout_s) as client:
            return self._rewards(requests, await client.reward(requests), kwargs)
