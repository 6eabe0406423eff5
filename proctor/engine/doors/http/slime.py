"""slime's remote reward model protocol (`--rm-type remote_rm --rm-url URL`, slime v0.3.1
`slime/rollout/rm_hub/__init__.py`, `remote_rm`): one POST per rollout of `{"prompt", "response", "label"}`,
answered with the reward as a bare JSON number, or with `?details=1` in the URL a dict (`--reward-key reward`
reads it): `{"reward", "r_f1", "alpha", "format_ok", "training_step", "proctor_fallback"[, "r_atom"]}`.

- `prompt` is the text the policy saw (slime's `--apply-chat-template` renders a chat into it); a chat sent as a
  list of messages is a 400, since the judge reads text.
- The training step: slime sends none. As on OpenRLHF's route, `training_step` / `total_steps` in the URL are used
  when given; otherwise `run` and `rollouts_per_step` make the server count the run's rollouts.
- slime retries any non-200 answer 10 times (120 s timeout each) and then fails the rollout: a rollout whose
  reward cannot be computed gets `reward.openrlhf.fallback_reward` (counted in `proctor_reward_fallbacks_total`,
  logged), or a 422 with `reward.openrlhf.on_error: fail`, as on OpenRLHF's route.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.responses import Response

from proctor.engine.cores.reward import RewardCore
from proctor.engine.doors.http.app import HttpFront
from proctor.engine.doors.http.errors import ApiError, field_path, json_response
from proctor.engine.doors.http.rollout_reward import BadRequest, failure, fall_back, golds, score, step_of
from proctor.engine.rewards.pipeline import RewardOutcome, RolloutInput
from proctor.engine.rewards.steps import StepRun

PATH = "/slime/reward"
_ROUTE = "slime endpoint"


class SlimeBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    prompt: str
    response: str
    label: str | list[str] | None = None
    training_step: int | None = None
    total_steps: int | None = None
    run: str | None = None
    rollouts_per_step: int | None = None


def parse(raw: bytes, query: dict[str, str]) -> tuple[SlimeBody, int | None, int | None, StepRun | None, bool]:
    """The body, T (if sent), T_MAX (if sent), the run (if T is not sent) and whether to answer a dict."""
    try:
        body = SlimeBody.model_validate_json(raw or b"null")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = field_path(tuple(first["loc"]))
        if where.startswith("prompt"):
            raise BadRequest(
                "prompt: must be the prompt's text; a chat sent as messages needs slime's --apply-chat-template"
            ) from None
        raise BadRequest(f"{where}: {first['msg']}" if where else f"the body: {first['msg']}") from None
    details = query.get("details", "0")
    if details not in ("0", "1"):
        raise BadRequest(f"details: must be 0 or 1, got {details!r}")
    step, total, run = step_of(
        body.training_step, body.total_steps, body.run, body.rollouts_per_step, query, "slime", "--rm-url"
    )
    return body, step, total, run, details == "1"


def router(front: HttpFront, core: RewardCore, on_error: str, fallback: float) -> APIRouter:
    api = APIRouter()
    svc = core.svc

    @api.post(PATH)
    async def reward(request: Request) -> Response:
        try:
            body, step, total, run, details = parse(await request.body(), dict(request.query_params))
        except BadRequest as exc:
            return json_response({"error": str(exc)}, 400)
        item = RolloutInput(body.prompt, body.response, golds(body.label), step, total, run=run)
        try:
            async with front.admitted(svc, 1):
                outcome: RewardOutcome | BaseException = await front.run(request, _scored(core, item))
        except ApiError as exc:
            headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
            return json_response({"error": exc.message}, exc.status, headers)
        if isinstance(outcome, BaseException):
            field, message = failure(outcome, _ROUTE)
            if on_error == "fail":
                return json_response(
                    {"error": "the rollout could not be scored", "field": field, "message": message}, 422
                )
            fall_back(svc.metrics.reward_fallbacks, _ROUTE, "the rollout", field, message, fallback)
            return json_response({"reward": fallback, "proctor_fallback": 1.0} if details else fallback)
        return json_response(_details(outcome) if details else outcome.reward)

    return api


async def _scored(core: RewardCore, item: RolloutInput) -> RewardOutcome | BaseException:
    """The outcome, or what stopped it (answered per on_error, not as a 500)."""
    try:
        return await score(core, item)
    except Exception as exc:  # every failure of one rollout is answered per on_error
        return exc


def _details(o: RewardOutcome) -> dict[str, Any]:
    out: dict[str, Any] = {
        "reward": o.reward,
        "r_f1": o.r_f1,
        "alpha": o.alpha,
        "format_ok": float(o.format_ok),
        "training_step": float(o.training_step),
        "proctor_fallback": 0.0,
    }
    if o.r_atom is not None:
        out["r_atom"] = float(o.r_atom)
    return out
