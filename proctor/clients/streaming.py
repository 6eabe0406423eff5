"""One streaming call for many items, exactly one result per id: what every proctor client does."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

import grpc
from google.protobuf.message import Message

from proctor.v1 import common_pb2

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


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


@dataclass(frozen=True)
class Credentials:
    """How to reach a server: plaintext (the default), TLS (`ca_file`), mutual TLS (`cert_file` + `key_file`),
    and/or a bearer token sent with every call."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    token: str | None = None
    server_name: str | None = None  # the name the server's certificate is checked against, if not the target's

    @classmethod
    def from_files(
        cls, ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None, token_env: str = ""
    ) -> Credentials:
        """Credentials from file paths and the name of an environment variable holding the token, each checked now:
        a ValueError names the option at fault (`ca_file`, `cert_file`, `key_file`, `token_env`)."""
        if bool(cert_file) != bool(key_file):
            raise ValueError("cert_file: a client certificate and its key_file go together")
        if cert_file and not ca_file:
            raise ValueError("ca_file: mutual TLS (cert_file) needs the server's CA too")
        for name, path in (("ca_file", ca_file), ("cert_file", cert_file), ("key_file", key_file)):
            if path and not os.access(path, os.R_OK):
                raise ValueError(f"{name}: cannot read {path}")
        token = None
        if token_env:
            token = os.environ.get(token_env, "").strip()
            if not token:
                raise ValueError(f"token_env: ${token_env} is not set")
        return cls(ca_file=ca_file or None, cert_file=cert_file or None, key_file=key_file or None, token=token)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def _ssl(self) -> grpc.ChannelCredentials:
        def read(path: str | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(read(self.ca_file), read(self.key_file), read(self.cert_file))

    def _options(self, max_message_bytes: int) -> list[tuple[str, Any]]:
        options = channel_options(max_message_bytes)
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        return options

    def channel(self, target: str, max_message_bytes: int = 64 * MiB) -> grpc.Channel:
        if self.ca_file:
            return grpc.secure_channel(target, self._ssl(), options=self._options(max_message_bytes))
        return grpc.insecure_channel(target, options=self._options(max_message_bytes))

    def aio_channel(self, target: str, max_message_bytes: int = 64 * MiB) -> grpc.aio.Channel:
        if self.ca_file:
            return grpc.aio.secure_channel(target, self._ssl(), options=self._options(max_message_bytes))
        return grpc.aio.insecure_channel(target, options=self._options(max_message_bytes))


PLAINTEXT = Credentials()


class SyncClient:
    """The blocking half every service client shares: one channel (safe across threads), credentials, timeout."""

    def __init__(
        self,
        target: str,
        *,
        timeout_s: float | None = None,
        credentials: Credentials = PLAINTEXT,
        max_message_bytes: int = 64 * MiB,
    ) -> None:
        self.channel = credentials.channel(target, max_message_bytes)
        self.metadata = credentials.metadata()
        self.timeout_s = timeout_s
        self.stub: Any = None  # the service's generated stub, set by each client

    def info(self) -> common_pb2.ModelInfo:
        """The service's model and limits (every proctor service answers Info)."""
        info: common_pb2.ModelInfo = self.stub.Info(
            common_pb2.InfoRequest(), timeout=self.timeout_s, metadata=self.metadata
        )
        return info

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout_s)


class AsyncClient:
    """The asyncio twin of SyncClient; create it inside the running loop."""

    def __init__(
        self,
        target: str,
        *,
        timeout_s: float | None = None,
        credentials: Credentials = PLAINTEXT,
        max_message_bytes: int = 64 * MiB,
    ) -> None:
        self.channel = credentials.aio_channel(target, max_message_bytes)
        self.metadata = credentials.metadata()
        self.timeout_s = timeout_s
        self.stub: Any = None  # the service's generated stub, set by each client

    async def info(self) -> common_pb2.ModelInfo:
        """See SyncClient.info."""
        info: common_pb2.ModelInfo = await self.stub.Info(
            common_pb2.InfoRequest(), timeout=self.timeout_s, metadata=self.metadata
        )
        return info

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close(grace=None)

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        await asyncio.wait_for(self.channel.channel_ready(), timeout_s)


# What grpc.aio reports when sending a request fails because the call already ended (the server went away, or ended
# the call while the client was still writing): it overwrites the call's real status with this INTERNAL.
_AIO_SEND_FAILED = "Internal error from Core"


def _send_failed(exc: grpc.RpcError) -> bool:
    return bool(exc.code() == grpc.StatusCode.INTERNAL and exc.details() == _AIO_SEND_FAILED)


def stream_status(exc: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    """A broken stream's status as the server meant it: grpc.aio's failed-send INTERNAL, when `status_behind` found
    no refusal behind it, is UNAVAILABLE (the server closed the call or died), so retrying can help."""
    if _send_failed(exc):
        return (
            grpc.StatusCode.UNAVAILABLE,
            "the call ended while requests were being sent (the server closed it or died)",
        )
    return exc.code(), exc.details() or ""


def collect(kind: type[R], sent: list[str], answers: Iterable[R], broke: grpc.RpcError | None = None) -> dict[str, R]:
    """Key the answers by id. An id the server never answered gets a client-made error: the stream's own status
    when the call failed (e.g. UNAUTHENTICATED), else UNAVAILABLE (retryable)."""
    results: dict[str, R] = {}
    for result in answers:
        results.setdefault(getattr(result, "id"), result)  # noqa: B009 (R is any result message)
    code, why = UNAVAILABLE, "the stream ended before this item was answered"
    if broke is not None:
        status, details = stream_status(broke)
        code = status.value[0]
        why = f"the stream failed with {status.name}: {details}"
    for item_id in sent:
        if item_id not in results:
            results[item_id] = error_result(kind, item_id, code, why)
    return results


def error_result(kind: type[R], item_id: str, code: int, message: str) -> R:
    """A result message of `kind` that fails `item_id` with a client-made status."""
    # protobuf's stubs type Message() as taking no fields; every result message takes these two.
    make: Callable[..., R] = kind
    return make(id=item_id, error=common_pb2.Status(code=code, message=message))


def unique_ids(requests: list[Any]) -> list[str]:
    """The requests' ids; a repeated one is refused here, at the door: its results could not be told apart."""
    ids = [r.id for r in requests]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        repeated = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise ValueError(f"id {repeated!r} is used by more than one request; every item needs its own id")
    return ids


def _outgoing(requests: list[Any], batch: type[Message] | None, batch_size: int) -> Iterator[Any]:
    if batch is None:
        return iter(requests)
    make: Callable[..., Message] = batch  # every batch message has a repeated `items`
    return (make(items=requests[i : i + batch_size]) for i in range(0, len(requests), batch_size))


def run_sync(
    client: SyncClient,
    kind: type[R],
    method: Any,
    requests: list[Any],
    batch: type[Message] | None = None,
    batch_size: int = 256,
) -> dict[str, R]:
    """One call for all `requests`; with `batch` (e.g. RewardBatch, for a *Batched method) `batch_size` items go in
    each message and replies carry lists of results."""
    sent = unique_ids(requests)
    answers: list[R] = []
    broke: grpc.RpcError | None = None
    try:
        for reply in method(_outgoing(requests, batch, batch_size), timeout=client.timeout_s, metadata=client.metadata):
            answers.extend(reply.items if batch is not None else (reply,))
    except grpc.RpcError as exc:
        broke = exc
    return collect(kind, sent, answers, broke)


async def run_async(
    client: AsyncClient,
    kind: type[R],
    method: Any,
    requests: list[Any],
    batch: type[Message] | None = None,
    batch_size: int = 256,
) -> dict[str, R]:
    """The asyncio twin of run_sync."""
    sent = unique_ids(requests)
    answers: list[R] = []
    broke: grpc.RpcError | None = None
    try:
        outgoing = _outgoing(requests, batch, batch_size)
        async for reply in method(outgoing, timeout=client.timeout_s, metadata=client.metadata):
            answers.extend(reply.items if batch is not None else (reply,))
    except grpc.RpcError as exc:
        broke = await status_behind(
            exc, lambda none, deadline_s: method(none, timeout=deadline_s, metadata=client.metadata)
        )
    return collect(kind, sent, answers, broke)


REFUSAL_PROBE_S = 10.0  # a refusal is one round trip; the probe must not hold a caller whose call already failed


async def status_behind(exc: grpc.RpcError, start: Callable[[Iterator[Any], float], Any]) -> grpc.RpcError:
    """`exc`, or the status of a call the server refuses as a whole (UNAUTHENTICATED, UNIMPLEMENTED...) that
    grpc.aio lost: when the call ends while the client is still sending, it reports INTERNAL "Internal error from
    Core" instead (grpc/grpc#36066; most of the time with large requests), which would make a refused token look
    like a dead server: retryable, forever. `start(requests, deadline_s)` makes the same call again with no
    requests, which cannot race; when that one is accepted, or does not end within REFUSAL_PROBE_S, the first call
    ended for another reason and `exc` stands (reported UNAVAILABLE)."""
    if not _send_failed(exc):
        return exc
    try:
        async for _ in start(iter(()), REFUSAL_PROBE_S):
            pass
    except grpc.RpcError as again:
        return exc if again.code() == grpc.StatusCode.DEADLINE_EXCEEDED else again
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # the caller's own cancellation
        return exc  # grpc.aio cancels, locally, a call it cannot start on a channel whose server just died
    return exc
