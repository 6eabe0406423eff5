"""OpenRLHF's remote reward model protocol: `POST /reward` on the HTTP front (with the reward service).

OpenRLHF's `--remote_rm_url` POSTs `{"query": [...], "prompts": [...], "labels": [...]}` (query = prompt +
response) and reads `{"rewards": [...], "scores": [...], "extra_logs": {...}}`. OpenRLHF sends no training step:
give it as `training_step` (and optionally `total_steps`) in the body or the URL's query string
(e.g. `--remote_rm_url http://host:8000/reward?training_step=0`), or the request is refused with 400.
A rollout that cannot be scored (bad input, RRM failure) fails the whole POST with 422 and the item's reason:
this protocol has no per-item errors, and a made-up reward would be worse. Errors are `{"error": "..."}`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.responses import Response

from proctor.engine.errors import ItemError
from proctor.engine.rewards.pipeline import RewardScorer, RolloutInput
from proctor.engine.services.http.app import HttpFront
from proctor.engine.services.http.errors import ApiError, field_path, json_response
from proctor.engine.services.streams import ServiceContext

log = logging.getLogger(__name__)

_INTEGER = re.compile(r"-?[0-9]{1,18}")


class OpenRLHFBody(BaseModel):
    # OpenRLHF versions add keys of their own: what this endpoint does not use is ignored, as before.
    model_config = ConfigDict(strict=True, extra="ignore")

    query: list[str]
    prompts: list[str]
    labels: list[str]
    training_step: int | None = None
    total_steps: int | None = None


class BadRequest(ValueError):
    pass


def parse_body(raw: bytes, query: dict[str, str]) -> list[RolloutInput]:
    try:
        body = OpenRLHFBody.model_validate_json(raw or b"null")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = field_path(tuple(first["loc"]))
        raise BadRequest(f"{where}: {first['msg']}" if where else f"the body: {first['msg']}") from None
    if not len(body.query) == len(body.prompts) == len(body.labels):
        raise BadRequest(
            f"query, prompts and labels differ in length ({len(body.query)}, {len(body.prompts)}, {len(body.labels)})"
        )

    def number(name: str, value: int | None) -> int | None:
        if value is not None or name not in query:
            return value
        if not _INTEGER.fullmatch(query[name]):
            raise BadRequest(f"{name}: must be an integer, got {query[name]!r}")
        return int(query[name])

    step = number("training_step", body.training_step)
    if step is None:
        raise BadRequest("training_step: required (in the body or as ?training_step=N in the URL)")
    total = number("total_steps", body.total_steps)
    items = []
    for i, (full, prompt, label) in enumerate(zip(body.query, body.prompts, body.labels, strict=True)):
        if not full.startswith(prompt):
            raise BadRequest(f"query[{i}]: does not start with prompts[{i}]")
        items.append(RolloutInput(prompt, full[len(prompt) :], [label], step, total))
    return items


async def score(scorer: RewardScorer, items: list[RolloutInput]) -> tuple[int, dict[str, Any]]:
    outcomes = await asyncio.gather(*(scorer.score(item) for item in items), return_exceptions=True)
    failures = [
        {"index": i, "field": o.field, "message": o.message} for i, o in enumerate(outcomes) if isinstance(o, ItemError)
    ]
    unexpected = [o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, ItemError)]
    if unexpected:
        log.error("OpenRLHF endpoint: scoring failed: %r", unexpected[0])
        return 500, {"error": f"internal error: {unexpected[0]!r}"}
    if failures:
        return 422, {"error": "some rollouts could not be scored", "items": failures}
    ok = [o for o in outcomes if not isinstance(o, BaseException)]
    rewards = [o.reward for o in ok]
    return 200, {
        "rewards": rewards,
        "scores": rewards,
        "extra_logs": {
            "r_f1": [o.r_f1 for o in ok],
            "r_atom": [o.r_atom for o in ok],  # null for a rollout without atoms (JSON has no NaN)
            "alpha": [o.alpha for o in ok],
            "format_ok": [float(o.format_ok) for o in ok],
        },
    }


def router(front: HttpFront, scorer: RewardScorer, svc: ServiceContext) -> APIRouter:
    api = APIRouter()

    @api.post("/reward")
    async def reward(request: Request) -> Response:
        try:
            items = parse_body(await request.body(), dict(request.query_params))
        except BadRequest as exc:
            return json_response({"error": str(exc)}, 400)
        try:
            async with front.admitted(svc, len(items)):
                status, payload = await front.run(request, score(scorer, items))
        except ApiError as exc:
            headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
            return json_response({"error": exc.message}, exc.status, headers)
        return json_response(payload, status)

    return api
