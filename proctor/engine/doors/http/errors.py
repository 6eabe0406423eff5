"""HTTP errors in vLLM's OpenAI error shape, and the one JSON encoder of the front (strict: no NaN / Infinity)."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.responses import Response

from proctor.engine.errors import ItemError

# vLLM's ErrorResponse `type` per status (OpenAI's names).
_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    411: "BadRequestError",
    413: "BadRequestError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    499: "ClientClosedRequest",  # nginx's code: nobody reads it, the client has gone
    500: "InternalServerError",
    503: "ServiceUnavailableError",
    504: "TimeoutError",
}


_UNION_TAGS = {"str", "int", "float", "bool"}


class ApiError(Exception):
    """A request refused or failed as a whole; `param` names the body field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s


# A core's ItemError code as an HTTP status; the retryable ones carry Retry-After.
_STATUS = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503}


def http_error(error: ItemError) -> ApiError:
    status = _STATUS.get(error.code, 500)
    return ApiError(status, error.message, error.field or None, 1 if status in (429, 503) else None)


def encode(content: Any) -> bytes:
    """Strict JSON: a NaN or an infinity is a bug to surface (ValueError), never `NaN` on the wire."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(encode(content), status, headers, media_type="application/json")


def error_response(error: ApiError) -> Response:
    body = {
        "error": {
            "message": error.message,
            "type": _TYPES.get(error.status) or HTTPStatus(error.status).phrase.replace(" ", "") + "Error",
            "param": error.param,
            "code": error.status,
        }
    }
    headers = {"Retry-After": str(error.retry_after_s)} if error.retry_after_s is not None else None
    if error.status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return json_response(body, error.status, headers)


def field_path(loc: tuple[int | str, ...]) -> str:
    """pydantic's location of an error -> `messages[0].content` (the leading `body` dropped)."""
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in part or part in _UNION_TAGS:
            continue  # the union branch that pydantic names in its location, not a field
        else:
            out += f".{part}" if out else str(part)
    return out


def validation_error(exc: RequestValidationError) -> ApiError:
    """The first problem of the body, naming its field (pydantic's message; 'extra' fields as unsupported)."""
    errors: list[dict[str, Any]] = list(exc.errors())
    first: dict[str, Any] = errors[0] if errors else {"loc": (), "msg": "invalid body", "type": ""}
    field = field_path(tuple(first.get("loc", ())))
    if first.get("type") == "extra_forbidden":
        message = f"{field}: not supported by this server"
    elif first.get("type") == "json_invalid":
        context: dict[str, Any] = first.get("ctx") or {}
        message = f"the body is not valid JSON: {context.get('error', first.get('msg'))}"
        field = ""
    else:
        message = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem(s))"
    return ApiError(400, message, field or None)
