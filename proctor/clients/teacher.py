"""Teacher clients for trainers: send many items on one stream, get exactly one result per id back.

    with TeacherClient("localhost:50051") as teacher:
        results = teacher.generate([generate_request("a", "Once upon a time", n=4, logprobs=True)])
        results["a"].completions[0].text

Results come back as the proto messages (`GenerateResult`, `ScoreResult`), keyed by id. A failed item is a result
with `error` set (see `raise_for_error`); an item the server never answered (the stream broke, the server drained)
gets a client-made UNAVAILABLE error, so every id you sent has exactly one result.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from proctor.clients.streaming import AsyncClient, SyncClient, run_async, run_sync
from proctor.v1 import common_pb2, teacher_pb2, teacher_pb2_grpc


def _prompt(value: str | list[int]) -> common_pb2.Prompt:
    if isinstance(value, str):
        return common_pb2.Prompt(text=value)
    return common_pb2.Prompt(token_ids=common_pb2.TokenIds(ids=value))


def generate_request(
    id: str, prompt: str | list[int], *, timeout_ms: int = 0, **params: Any
) -> teacher_pb2.GenerateRequest:
    """`params` are SamplingParams fields: n, temperature, top_p, top_k, seed, max_tokens, stop, logprobs, ..."""
    return teacher_pb2.GenerateRequest(
        id=id, prompt=_prompt(prompt), params=teacher_pb2.SamplingParams(**params), timeout_ms=timeout_ms
    )


def score_request(
    id: str,
    context: str | list[int],
    target: str | list[int],
    *,
    top_logprobs: int = 0,
    timeout_ms: int = 0,
    probes: list[list[int]] | None = None,
) -> teacher_pb2.ScoreRequest:
    """`probes`: per target position, token ids (at most 128) whose log-probs come back in the result's
    `probe_logprobs`, row by row (a student's top-k, for distillation)."""
    return teacher_pb2.ScoreRequest(
        id=id,
        context=_prompt(context),
        target=_prompt(target),
        top_logprobs=top_logprobs,
        timeout_ms=timeout_ms,
        probes=[common_pb2.TokenIds(ids=row) for row in probes or ()],
    )


def score_group_request(
    id: str,
    context: str | list[int],
    continuations: list[str] | list[list[int]],
    *,
    top_logprobs: int = 0,
    timeout_ms: int = 0,
) -> teacher_pb2.ScoreRequest:
    """One prompt and its n sampled completions: the server computes the shared prompt once."""
    return teacher_pb2.ScoreRequest(
        id=id,
        context=_prompt(context),
        continuations=[_prompt(c) for c in continuations],
        top_logprobs=top_logprobs,
        timeout_ms=timeout_ms,
    )


def _score_rpc(stub: Any, batch_size: int) -> tuple[Any, type[teacher_pb2.ScoreBatch] | None]:
    """ScoreBatched for batch_size > 0 (Python gRPC's cost per message, not per item, dominates), else Score."""
    return (stub.ScoreBatched, teacher_pb2.ScoreBatch) if batch_size > 0 else (stub.Score, None)


class TeacherClient(SyncClient):
    """Blocking Teacher client (one channel; safe to share across threads)."""

    def __init__(self, target: str, **options: Any) -> None:
        """`options`: timeout_s, credentials (TLS / mTLS / bearer token), max_message_bytes."""
        super().__init__(target, **options)
        self.stub = teacher_pb2_grpc.TeacherStub(self.channel)

    def generate_stream(self, requests: Iterable[teacher_pb2.GenerateRequest]) -> Iterator[teacher_pb2.GenerateResult]:
        """Results as they finish, in completion order."""
        yield from self.stub.Generate(iter(requests), timeout=self.timeout_s, metadata=self.metadata)

    def generate(self, requests: Iterable[teacher_pb2.GenerateRequest]) -> dict[str, teacher_pb2.GenerateResult]:
        return run_sync(self, teacher_pb2.GenerateResult, self.stub.Generate, list(requests))

    def score(
        self, requests: Iterable[teacher_pb2.ScoreRequest], batch_size: int = 64
    ) -> dict[str, teacher_pb2.ScoreResult]:
        """One call for all requests, `batch_size` per message (ScoreBatched); 0 = one per message (Score)."""
        method, batch = _score_rpc(self.stub, batch_size)
        return run_sync(self, teacher_pb2.ScoreResult, method, list(requests), batch, batch_size)

    def generate_triples(self, request: teacher_pb2.TriplesRequest) -> Iterator[teacher_pb2.TripleResult]:
        """SKD triples as each event's are ready; a failed event is a result with `error` (and its head)."""
        yield from self.stub.GenerateTriples(request, timeout=self.timeout_s, metadata=self.metadata)


class AsyncTeacherClient(AsyncClient):
    """asyncio Teacher client; create it inside the running loop."""

    def __init__(self, target: str, **options: Any) -> None:
        super().__init__(target, **options)
        self.stub = teacher_pb2_grpc.TeacherStub(self.channel)

    async def generate_stream(
        self, requests: Iterator[teacher_pb2.GenerateRequest] | AsyncIterator[teacher_pb2.GenerateRequest]
    ) -> AsyncIterator[teacher_pb2.GenerateResult]:
        """Results as they finish; `requests` may be an async iterator that keeps producing items."""
        call = self.stub.Generate(requests, timeout=self.timeout_s, metadata=self.metadata)
        async for result in call:
            yield result

    async def generate(self, requests: Iterable[teacher_pb2.GenerateRequest]) -> dict[str, teacher_pb2.GenerateResult]:
        return await run_async(self, teacher_pb2.GenerateResult, self.stub.Generate, list(requests))

    async def score(
        self, requests: Iterable[teacher_pb2.ScoreRequest], batch_size: int = 64
    ) -> dict[str, teacher_pb2.ScoreResult]:
        """See TeacherClient.score."""
        method, batch = _score_rpc(self.stub, batch_size)
        return await run_async(self, teacher_pb2.ScoreResult, method, list(requests), batch, batch_size)
