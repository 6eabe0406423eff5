"""OpenRLHF's remote reward model protocol: `POST /reward` on the HTTP front (tested against OpenRLHF 0.11.2).

OpenRLHF (`--reward.remote_url http://host:PORT/reward?...`) POSTs once per rollout
`{"query": [q], "prompts": [p], "labels": [label]}` and reads `{"rewards", "scores", "extra_logs"}`:

- `query` is the prompt's tokens and the response's, decoded with special tokens; the prompt may have been cut
  from the left to fit (`max_len`), so the query can start inside the prompt. The response is the query after
  the longest start of it that ends the prompt (prompts[i]); a query that shares nothing with its prompt is that
  rollout's error.
- `labels[i]`: the dataset's label (`--data.label_key`) — a string, a list of golds, a string holding a JSON list
  of golds, or "" / null (no label key): no gold, scored by the rule (R_f1 = 0).
- The training step: OpenRLHF sends none. `training_step` (and `total_steps`) in the body or the URL is used when
  given; otherwise `run` and `rollouts_per_step` (URL or body) make the server count the run's rollouts
  (engine/rewards/steps.py). Neither is a 400: a trainer configured so would get α at a made-up T.
- A request that is malformed as a whole (bad JSON, types, numbers; lengths that differ; no step) is a 400 with
  `{"error": ...}`: a configuration to fix, which OpenRLHF reports by failing.
- A rollout whose reward cannot be computed (T past T_MAX, a query unrelated to its prompt, an RRM failure) is
  answered per `reward.openrlhf.on_error`: `fallback` (default) gives it `reward.openrlhf.fallback_reward`
  (default -1, the reward of a malformed rollout), says so in `extra_logs["proctor_fallback"]` (1 for it, 0 for
  the others) and in `errors` (index, field, message), logs it and counts it in
  `proctor_reward_fallbacks_total{field}`; `fail` answers 422. OpenRLHF retries a non-200 answer 5 times and then
  trains on a missing reward, which crashes it, hence the fallback by default.
- JSON is strict: `extra_logs` holds a key only when every rollout of the POST has a number for it (OpenRLHF turns
  each value into a tensor; there is no NaN or null to give it): `r_atom` is absent for a rollout without one.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.responses import Response

from proctor.engine.cores.reward import RULES_INLINE_CHARS, RewardCore, off_loop
from proctor.engine.doors.http.app import HttpFront
from proctor.engine.doors.http.errors import ApiError, field_path, json_response
from proctor.engine.doors.http.rollout_reward import BadRequest, failure, fall_back, golds, score, step_of
from proctor.engine.errors import ItemError
from proctor.engine.rewards.pipeline import RewardOutcome, RolloutInput
from proctor.engine.rewards.steps import StepRun

_ROUTE = "OpenRLHF endpoint"
OVERLAP_INLINE_CHARS = RULES_INLINE_CHARS  # a cut prompt longer than this is matched on the rules' thread


class OpenRLHFBody(BaseModel):
    # OpenRLHF versions add keys of their own: what this endpoint does not use is ignored, as before.
    model_config = ConfigDict(strict=True, extra="ignore")

    query: list[str]
    prompts: list[str]
    labels: list[str | list[str] | None]
    training_step: int | None = None
    total_steps: int | None = None
    run: str | None = None
    rollouts_per_step: int | None = None


def overlap(prompt: str, query: str) -> int:
    """The length of the longest start of `query` that is an end of `prompt` (KMP's failure function over
    query-start + separator + prompt: linear in the two)."""
    head = query[: len(prompt)]
    text = head + "\x00" + prompt  # "\x00" cannot be matched across: the answer is at most len(head)
    fail = [0] * len(text)
    k = 0
    for i in range(1, len(text)):
        c = text[i]
        while k and c != text[k]:
            k = fail[k - 1]
        if c == text[k]:
            k += 1
        fail[i] = k
    return fail[-1] if text else 0


def response_of(prompt: str, query: str) -> str:
    """The response inside OpenRLHF's query: after the whole prompt, or after the part of it left by the cut."""
    if query.startswith(prompt):
        return query[len(prompt) :]
    # A token cut inside a character decodes to U+FFFD: not text of the prompt.
    trimmed = query.lstrip("\ufffd")
    shared = overlap(prompt, trimmed)
    if shared == 0:
        raise ItemError("shares no text with the end of its prompt: the response cannot be located", "query")
    return trimmed[shared:]


def parse_body(raw: bytes, query: dict[str, str]) -> tuple[OpenRLHFBody, int | None, int | None, StepRun | None]:
    """The body, T (if sent), T_MAX (if sent) and the run (if T is not sent)."""
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
    step, total, run = step_of(
        body.training_step, body.total_steps, body.run, body.rollouts_per_step, query, "OpenRLHF", "--reward.remote_url"
    )
    return body, step, total, run


class OpenRLHFRoute:
    def __init__(self, core: RewardCore, on_error: str, fallback_reward: float) -> None:
        self.core = core
        self.on_error = on_error
        self.fallback_reward = fallback_reward
        self._fallbacks = core.svc.metrics.reward_fallbacks

    async def answer(
        self, body: OpenRLHFBody, step: int | None, total: int | None, run: StepRun | None
    ) -> tuple[int, dict[str, Any]]:
        outcomes = await asyncio.gather(
            *(self._one(body, i, step, total, run) for i in range(len(body.query))), return_exceptions=True
        )
        failures: list[dict[str, Any]] = []
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, BaseException):
                field, message = failure(outcome, _ROUTE)
                failures.append({"index": i, "field": field, "message": message})
        if failures and self.on_error == "fail":
            return 422, {"error": "some rollouts could not be scored", "items": failures}
        for f in failures:
            what = f"rollout {f['index']}"
            fall_back(self._fallbacks, _ROUTE, what, f["field"], f["message"], self.fallback_reward)
        scored = [o if isinstance(o, RewardOutcome) else None for o in outcomes]
        rewards = [o.reward if o is not None else self.fallback_reward for o in scored]
        payload: dict[str, Any] = {"rewards": rewards, "scores": rewards, "extra_logs": _extra_logs(scored)}
        if failures:
            payload["errors"] = failures
        return 200, payload

    async def _one(
        self, body: OpenRLHFBody, i: int, step: int | None, total: int | None, run: StepRun | None
    ) -> RewardOutcome:
        prompt, query = body.prompts[i], body.query[i]
        try:
            if query.startswith(prompt) or len(prompt) <= OVERLAP_INLINE_CHARS:
                response = response_of(prompt, query)
            else:  # a long cut prompt: the character-by-character match would hold up the event loop
                response = await off_loop(response_of, prompt, query)
        except ItemError:
            if run is not None:
                await self.core.count_unscored(run)
            raise
        return await score(self.core, RolloutInput(prompt, response, golds(body.labels[i]), step, total, run=run))


def _extra_logs(scored: list[RewardOutcome | None]) -> dict[str, list[float]]:
    logs: dict[str, list[float]] = {"proctor_fallback": [0.0 if o is not None else 1.0 for o in scored]}
    done = [o for o in scored if o is not None]
    if len(done) < len(scored):
        return logs  # a rollout that fell back has no parts: every other key would be missing one value
    logs["r_f1"] = [o.r_f1 for o in done]
    logs["alpha"] = [o.alpha for o in done]
    logs["format_ok"] = [float(o.format_ok) for o in done]
    logs["training_step"] = [float(o.training_step) for o in done]
    atoms = [o.r_atom for o in done]
    if all(a is not None for a in atoms):
        logs["r_atom"] = [float(a) for a in atoms if a is not None]
    return logs


def router(front: HttpFront, core: RewardCore, on_error: str, fallback: float) -> APIRouter:
    api = APIRouter()
    route = OpenRLHFRoute(core, on_error, fallback)
    svc = core.svc

    @api.post("/reward")
    async def reward(request: Request) -> Response:
        try:
            body, step, total, run = parse_body(await request.body(), dict(request.query_params))
        except BadRequest as exc:
            return json_response({"error": str(exc)}, 400)
        try:
            async with front.admitted(svc, len(body.query)):
                status, payload = await front.run(request, route.answer(body, step, total, run))
        except ApiError as exc:
            headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
            return json_response({"error": exc.message}, exc.status, headers)
        return json_response(payload, status)

    return api
