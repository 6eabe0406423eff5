"""What every proctor call passes through before its service sees it: the concurrent-call limit, tolerant decoding,
and replies that go out already encoded.

gRPC's own `maximum_concurrent_rpcs` counts every call, Health's included: a few idle streams at the limit made the
probes fail and the replicas get dropped. The limit is counted here instead, over the proctor services only, so
Health and reflection always answer. And gRPC ends a whole call with UNKNOWN (and logs a traceback) when one
request message does not parse; here such a message becomes an `Undecodable` the stream answers as an item error,
and a damaged batch is split into its items, so that the intact ones are answered. The streams encode each result
once, when it is ready (streams.py): their replies are bytes, which the serializer sends as they are.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message_factory import GetMessageClass

from proctor.engine.doors.grpc.streams import DamagedBatch, Undecodable


class CallLimit:
    """The proctor calls running now, against `server.max_concurrent_calls`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0


def _tolerant(deserialize: Callable[[bytes], Any], message_type: Any, name: str) -> Callable[[bytes], Any]:
    batch_item = _batch_item_type(message_type)

    def decode(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:  # protobuf's DecodeError, or anything a corrupt message makes the parser raise
            if batch_item is not None:
                entries = _split_batch(data, batch_item)
                if entries is not None:
                    return DamagedBatch(entries)
            return Undecodable(len(data), name)

    return decode


def _sending_encoded(serialize: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """A reply the stream already encoded goes out as it is; a message (Info, GenerateTriples) is encoded."""

    def encode(reply: Any) -> bytes:
        return reply if type(reply) is bytes else serialize(reply)

    return encode


def _batch_item_type(message_type: Any) -> Any:
    """The item class of a batch message (`repeated X items = 1` and nothing else), else None."""
    if message_type is None or [f.name for f in message_type.fields] != ["items"]:
        return None
    items = message_type.fields[0]
    if items.number != 1 or items.message_type is None:
        return None
    return GetMessageClass(items.message_type)


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7


def _split_batch(data: bytes, item_type: Any) -> list[Any] | None:
    """A damaged batch's items one by one, so that the intact ones are answered; None when even the batch's own
    framing (field 1, length-delimited, again and again) is broken."""
    entries: list[Any] = []
    at = 0
    try:
        while at < len(data):
            tag, at = _varint(data, at)
            if tag != (1 << 3) | 2:  # field 1, length-delimited: nothing else belongs in a batch
                return None
            size, at = _varint(data, at)
            if at + size > len(data):
                return None
            chunk = data[at : at + size]
            at += size
            try:
                entries.append(item_type.FromString(chunk))
            except Exception:
                entries.append(Undecodable(len(chunk), item_type.DESCRIPTOR.full_name))
    except ValueError:
        return None
    return entries


def guarded(handler: grpc.RpcMethodHandler[Any, Any], calls: CallLimit) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` counted against the call limit (RESOURCE_EXHAUSTED past it), its requests decoded tolerantly: a
    stream's bad message reaches the stream as an `Undecodable`; a unary call's is refused INVALID_ARGUMENT."""
    deserialize = handler.request_deserializer
    assert deserialize is not None  # generated services always name their request type
    message_type = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
    name = message_type.full_name if message_type is not None else "request message"
    serialize = handler.response_serializer
    assert serialize is not None  # likewise the reply type
    options = {
        "request_deserializer": _tolerant(deserialize, message_type, name),
        "response_serializer": _sending_encoded(serialize),
    }

    async def enter(context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if calls.active >= calls.limit:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the server runs its limit of {calls.limit} concurrent calls (server.max_concurrent_calls); "
                "retry later or on another replica",
            )
        calls.active += 1

    async def decoded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if isinstance(request, Undecodable):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"the request ({request.size} bytes) is not a valid {name}"
            )

    if handler.request_streaming and handler.response_streaming:
        streaming: Any = handler.stream_stream  # the aio servicer's async generator

        async def stream_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await enter(context)
            try:
                async for reply in streaming(requests, context):
                    yield reply
            finally:
                calls.active -= 1

        return grpc.stream_stream_rpc_method_handler(stream_stream, **options)
    if handler.response_streaming:
        unary_in: Any = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await decoded(request, context)
            await enter(context)
            try:
                async for reply in unary_in(request, context):
                    yield reply
            finally:
                calls.active -= 1

        return grpc.unary_stream_rpc_method_handler(unary_stream, **options)
    if handler.request_streaming:  # no proctor RPC is client-streaming with one reply; counted all the same
        stream_in: Any = handler.stream_unary

        async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await enter(context)
            try:
                return await stream_in(requests, context)
            finally:
                calls.active -= 1

        return grpc.stream_unary_rpc_method_handler(stream_unary, **options)
    unary: Any = handler.unary_unary  # the aio servicer's coroutine

    async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await decoded(request, context)
        await enter(context)
        try:
            return await unary(request, context)
        finally:
            calls.active -= 1

    return grpc.unary_unary_rpc_method_handler(unary_unary, **options)
