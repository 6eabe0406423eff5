"""The Critic over HTTP in vLLM's pooling shape: `POST /classify` answers vLLM's ClassificationResponse
(`{id, object: "list", created, model, data: [{index, label, probs, num_classes}], usage}`), so a verl custom
reward function or any client of vLLM's classify route reads `data[i].probs[-1]` = P(valid).

What goes in is what proctor's Classify takes, one object per input: a sentence pair `{"first", "second"}`, or a
triple `{"head", "relation", "tail"[, "seed"]}` (`relation` one of the seven, e.g. "xWant"), scored as the mean
P(valid) over the configured name draws. A text alone is a 400: the Critic judges pairs. `probs` is
`[P(invalid), P(valid)]` and `label` their argmax (vLLM's); the cut-off decision stays Classify's over gRPC.
`use_activation: false` (vLLM's raw logits) is a 400: a triple's score is a mean of probabilities, with no logit.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import Response

from proctor.engine.cores.critic import CriticCore, Verdict
from proctor.engine.doors.http.app import HttpFront
from proctor.engine.doors.http.errors import ApiError, http_error, json_response
from proctor.engine.doors.http.openai_shapes import usage_json
from proctor.engine.doors.http.teacher_calls import now
from proctor.engine.errors import ItemError
from proctor.engine.skd.relations import RELATIONS

LABELS = ("invalid", "valid")


class PairInput(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    first: str
    second: str


class TripleInput(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    head: str
    relation: str
    tail: str
    seed: int | None = None


Item = PairInput | TripleInput


class ClassifyBody(BaseModel):
    """vLLM's ClassificationRequest, its input as the Critic's pairs and triples."""

    model_config = ConfigDict(strict=True, extra="forbid")

    model: str | None = None
    input: Annotated[list[Item], Field(min_length=1)] | Item
    use_activation: Literal[True] | None = None
    softmax: Literal[True] | None = None  # vLLM's deprecated names of use_activation
    activation: Literal[True] | None = None
    add_special_tokens: Literal[True] = True
    truncate_prompt_tokens: None = None  # nothing is cut: a pair too long for the classifier is a 400
    priority: Literal[0] = 0
    user: str | None = None
    request_id: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _not_text(cls, value: Any) -> Any:
        texts = value if isinstance(value, list) else [value]
        if any(isinstance(t, str) for t in texts):
            raise ValueError(
                "the Critic classifies sentence pairs and triples: send {first, second} or {head, relation, tail} "
                "per input, not a text alone"
            )
        return value


def router(front: HttpFront, core: CriticCore, name: str) -> APIRouter:
    """`name`: the critic's model id, what the route reports and a request's `model` must name."""
    api = APIRouter()
    svc = core.svc

    @api.post("/classify")
    async def classify(body: ClassifyBody, request: Request) -> Response:
        if body.model is not None and body.model != name:
            raise ApiError(404, f"The model `{body.model}` does not exist (this server serves `{name}`).", "model")
        items = body.input if isinstance(body.input, list) else [body.input]
        for i, item in enumerate(items):
            if isinstance(item, TripleInput) and item.relation not in RELATIONS:
                raise ApiError(400, f"input[{i}].relation: {item.relation!r} is not one of {sorted(RELATIONS)}")
        async with front.admitted(svc, len(items)):
            scored = await front.run(request, _all(core, items))
        data = [
            {"index": i, "label": LABELS[s.score > 0.5], "probs": [1.0 - s.score, s.score], "num_classes": 2}
            for i, s in enumerate(scored)
        ]
        tokens = sum(s.tokens for s in scored)
        return json_response(
            {
                "id": f"classify-{uuid.uuid4().hex}",
                "object": "list",
                "created": now(),
                "model": name,
                "data": data,
                "usage": usage_json(tokens, 0),
            }
        )

    return api


async def _all(core: CriticCore, items: list[Item]) -> list[Verdict]:
    """Every input scored together (the classifier batches them); the first that cannot be is the request's
    answer, and the others are cancelled."""

    def one(i: int, item: Item) -> Coroutine[Any, Any, Verdict]:
        field = f"input[{i}]"
        if isinstance(item, PairInput):
            return core.pair(item.first, item.second, None, field)
        return core.triple(item.head, item.relation, item.tail, item.seed, None, field)

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(i, item)) for i, item in enumerate(items)]
    except* ItemError as failed:
        first = failed.exceptions[0]
        assert isinstance(first, ItemError)
        error = http_error(first)
        raise ApiError(error.status, f"{first.field}: {first.message}", error.param, error.retry_after_s) from None
    return [task.result() for task in tasks]
