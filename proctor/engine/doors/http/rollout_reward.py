"""What the trainers' reward routes share (OpenRLHF's /reward, slime's /slime/reward): a label's golds, the training
step from the body or the URL (or the run whose rollouts the server counts, since neither trainer sends one), and
one rollout scored as the gRPC RewardModel scores it."""

from __future__ import annotations

import json
import logging
import re

from prometheus_client import Counter

from proctor.engine.cores.context import Later
from proctor.engine.cores.reward import RewardCore
from proctor.engine.errors import ItemError
from proctor.engine.rewards.pipeline import RewardOutcome, RolloutInput
from proctor.engine.rewards.steps import StepRun

log = logging.getLogger(__name__)

_INTEGER = re.compile(r"-?[0-9]{1,18}")


class BadRequest(ValueError):
    """The request as a whole is malformed: a 400, a configuration for the user to fix."""


def golds(label: str | list[str] | None) -> list[str]:
    """A label as the trainers send it: a string, a list, a string holding a JSON list of strings, or nothing."""
    if label is None:
        return []
    if isinstance(label, list):
        return label
    if label.startswith("["):
        try:
            parsed = json.loads(label)
        except ValueError:
            return [label]
        if isinstance(parsed, list) and all(isinstance(g, str) for g in parsed):
            return parsed
    return [label]


def _number(name: str, value: int | None, query: dict[str, str]) -> int | None:
    if value is not None or name not in query:
        return value
    if not _INTEGER.fullmatch(query[name]):
        raise BadRequest(f"{name}: must be an integer, got {query[name]!r}")
    return int(query[name])


def step_of(
    body_step: int | None,
    body_total: int | None,
    body_run: str | None,
    body_per_step: int | None,
    query: dict[str, str],
    trainer: str,
    url_flag: str,
) -> tuple[int | None, int | None, StepRun | None]:
    """T (if sent), T_MAX (if sent) and, when T is not sent, the run whose rollouts the server counts; each from
    the body or else the URL. Neither T nor a run is a 400: a trainer configured so would get α at a made-up T."""
    step = _number("training_step", body_step, query)
    total = _number("total_steps", body_total, query)
    if step is not None:
        return step, total, None
    key = body_run if body_run is not None else query.get("run")
    if key is None:
        raise BadRequest(
            f"training_step: {trainer} sends no training step; add ?run=NAME&rollouts_per_step=N&total_steps=M "
            f"to {url_flag} (the server counts the run's rollouts), or ?training_step=T"
        )
    per_step = _number("rollouts_per_step", body_per_step, query) or 0
    if per_step < 0:
        raise BadRequest(f"rollouts_per_step: must be >= 0, got {per_step}")
    return step, total, StepRun(key, per_step)


async def score(core: RewardCore, item: RolloutInput) -> RewardOutcome:
    """One rollout through the Reward core (the rules where it runs them, then the judge if they leave one)."""
    decided = core.reward(item)
    return await decided.run() if isinstance(decided, Later) else decided


def failure(outcome: BaseException, route: str) -> tuple[str, str]:
    """(field, message) of a rollout that could not be scored; an unexpected exception is logged with its trace."""
    if isinstance(outcome, ItemError):
        return outcome.field, outcome.message
    log.error("%s: scoring failed", route, exc_info=outcome)
    return "", f"internal error: {outcome!r}"


def fall_back(fallbacks: Counter, route: str, what: str, field: str, message: str, reward: float) -> None:
    """A rollout answered with the configured fallback reward: counted by field and logged."""
    fallbacks.labels(field or "internal").inc()
    log.warning("%s: %s gets the fallback reward %g: %s", route, what, reward, message)
