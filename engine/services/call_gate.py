"""What every proctor call passes through before its service sees it: the concurrent-call limit and tolerant decoding.

gRPC's own `maximum_concurrent_rpcs` counts every call, Health's included: a few idle streams at the limit made the
probes fail and the replicas get dropped. The limit is counted here instead, over the proctor services only, so
Health and reflection always answer. And gRPC ends a whole call with UNKNOWN (and logs a traceback) when one
request message does not parse; here such a message becomes an `Undecodable` the stream answers as an item error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from proctor.engine.services.streams import Undecodable


class CallLimit:
    """The proctor calls running now, against `server.max_concurrent_calls`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0


def _tolerant(deserialize: Callable[[bytes], Any], message_type: str) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:  # protobuf's DecodeError, or anything a corrupt message makes the parser raise
            return Undecodable(len(data), message_type)

    return decode


def guarded(handler: grpc.RpcMethodHandler[Any, Any], calls: CallLimit) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` counted against the call limit (RESOURCE_EXHAUSTED past it), its requests decoded tolerantly: a
    stream's bad message reaches the stream as an `Undecodable`; a unary call's is refused INVALID_ARGUMENT."""
    deserialize = handler.request_deserializer
    assert deserialize is not None  # generated services always name their request type
    message_type = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
    name = message_type.full_name if message_type is not None else "request message"
    options = {"request_deserializer": _tolerant(deserialize, name), "response_serializer": handler.response_serializer}

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
