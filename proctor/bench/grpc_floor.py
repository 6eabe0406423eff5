"""What gRPC itself costs a Python server and client per Score item: the floor under the Teacher's gRPC door.

    python -m proctor.bench.grpc_floor            # prints "listening on 127.0.0.1:PORT", serves until SIGTERM

A grpc.aio Teacher servicer with no proctor code in it: each ScoreRequest is answered at once, in the read loop,
with a ScoreResult of the shape proctor's would have (the target's ids, a log-prob per target token, top-k rows when
asked, timing), built from the request alone. No checks, queue, tasks, metrics or model: what it costs is the
transport and the messages' decoding, building and encoding. The overhead benchmark runs it beside the real server
with the same client, so that the share of the door's overhead that any Python gRPC servicer pays is measured, not
guessed.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc

from proctor.v1 import common_pb2, teacher_pb2


def result(req: teacher_pb2.ScoreRequest) -> teacher_pb2.ScoreResult:
    target = list(req.target.token_ids.ids)
    r = teacher_pb2.ScoreResult(
        id=req.id,
        target_token_ids=target,
        logprobs=[-1.0] * len(target),
        context_tokens=len(req.context.token_ids.ids),
        timing=common_pb2.Timing(queue_ms=1.0, inference_ms=1.0, total_ms=2.0),
    )
    if req.top_logprobs:
        k = req.top_logprobs
        r.top.k = k
        r.top.token_ids.extend(target * k)
        r.top.logprobs.extend([-1.0] * (k * len(target)))
    return r


async def score(
    requests: AsyncIterator[teacher_pb2.ScoreRequest], context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[teacher_pb2.ScoreResult]:
    async for req in requests:
        yield result(req)


async def score_batched(
    batches: AsyncIterator[teacher_pb2.ScoreBatch], context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[teacher_pb2.ScoreResults]:
    async for batch in batches:
        yield teacher_pb2.ScoreResults(items=[result(req) for req in batch.items])


async def _serve() -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    methods = {
        "Score": grpc.stream_stream_rpc_method_handler(
            score, teacher_pb2.ScoreRequest.FromString, teacher_pb2.ScoreResult.SerializeToString
        ),
        "ScoreBatched": grpc.stream_stream_rpc_method_handler(
            score_batched, teacher_pb2.ScoreBatch.FromString, teacher_pb2.ScoreResults.SerializeToString
        ),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("proctor.v1.Teacher", methods)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(grace=None)


def start() -> tuple[subprocess.Popen[str], str]:
    """The floor server in its own process, as the real one runs: the process and its host:port."""
    proc = subprocess.Popen([sys.executable, "-m", "proctor.bench.grpc_floor"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        proc.terminate()
        raise RuntimeError(f"the gRPC floor server did not start (exit {proc.wait()}): {line!r}")
    return proc, line.removeprefix("listening on ").strip()


if __name__ == "__main__":
    asyncio.run(_serve())
