"""One streaming call for many items, exactly one result per id: what every proctor client does."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from proctor.proto.proctor.v1 import common_pb2

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
MiB = 1024 * 1024


R = TypeVar("R", bound=Message)  # a result message: has `id` and an optional `error`


class ItemFailed(RuntimeError):
    def __init__(self, item_id: str, error: common_pb2.Status) -> None:
        name = CODE_NAMES.get(error.code, str(error.code))
        super().__init__(f"item {item_id!r} failed with {name}: {error.message}")
        self.item_id = item_id
        self.code = error.code
        self.field = error.field


def raise_for_error(result: Any) -> None:
    if result.HasField("error"):
        raise ItemFailed(result.id, result.error)


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


def collect(kind: type[R], sent: list[str], answers: Iterable[R], broke: str | None) -> dict[str, R]:
    """Key the answers by id; an id the server never answered gets a client-made UNAVAILABLE error (retryable)."""
    results: dict[str, R] = {}
    for result in answers:
        results.setdefault(getattr(result, "id"), result)  # noqa: B009 (R is any result message)
    why = broke or "the stream ended before this item was answered"
    for item_id in sent:
        if item_id not in results:
            results[item_id] = kind(id=item_id, error=common_pb2.Status(code=UNAVAILABLE, message=why))
    return results


def run_sync(kind: type[R], method: Any, requests: list[Any], timeout_s: float | None) -> dict[str, R]:
    answers: list[R] = []
    broke = None
    try:
        answers.extend(method(iter(requests), timeout=timeout_s))
    except grpc.RpcError as exc:
        broke = f"stream failed with {exc.code().name}: {exc.details()}"
    return collect(kind, [r.id for r in requests], answers, broke)


async def run_async(kind: type[R], method: Any, requests: list[Any], timeout_s: float | None) -> dict[str, R]:
    answers: list[R] = []
    broke = None
    try:
        async for result in method(iter(requests), timeout=timeout_s):
            answers.append(result)
    except grpc.RpcError as exc:
        broke = f"stream failed with {exc.code().name}: {exc.details()}"
    return collect(kind, [r.id for r in requests], answers, broke)
