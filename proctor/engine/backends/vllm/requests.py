"""One vLLM request run to its final output, with vLLM's failures turned into proctor's item errors, and the engine
holder both vLLM backends are (generation, and the pooling engine of the hidden-state scorer). vLLM is imported on
the first call."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

from proctor.engine.backends.settings import VllmSettings
from proctor.engine.errors import ItemError
from proctor.engine.items import BackendInfo


def _refused() -> tuple[type[Exception], ...]:
    """What vLLM raises for a request it refuses: ValueError in older releases, VLLMClientError (not a ValueError)
    in newer ones."""
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:
        return (ValueError,)
    return (ValueError, VLLMClientError)


async def final_output(engine: Any, outputs: AsyncIterator[Any], request_id: str) -> Any:
    """The last of `outputs` (the iterator of `engine.generate` or `engine.encode` for `request_id`). Cancelling the
    caller aborts the request in the engine (vLLM aborts a request whose iterator is cancelled)."""
    from vllm.v1.engine.exceptions import EngineDeadError

    if engine.errored:
        raise ItemError("the vLLM engine has died; retry on another replica", code="UNAVAILABLE")
    final = None
    try:
        async for out in outputs:
            final = out
    except EngineDeadError as exc:
        raise ItemError(f"the vLLM engine has died ({exc}); retry on another replica", code="UNAVAILABLE") from exc
    except _refused() as exc:  # e.g. prompt + 1 token over max_model_len
        raise ItemError(f"vLLM rejected the request: {exc}") from exc
    if final is None:
        raise RuntimeError(f"vLLM returned no output for {request_id}")
    return final


class EngineHolder:
    """What both vLLM backends hold: one `AsyncLLM` started off the event loop by the subclass's `_load`, what was
    loaded (`info`), and the requests in flight (the queue depth both report)."""

    def __init__(self, model: str, dtype: str, settings: VllmSettings | None, request_prefix: str) -> None:
        """`model`: an HF id, a local folder or a built-in (resolved to its folder on start)."""
        self._ref = model
        self._dtype = dtype
        self._settings = settings or VllmSettings()
        self._engine: Any = None
        self._info: BackendInfo | None = None
        self._ids = itertools.count()
        self._in_flight = 0
        self._request_prefix = request_prefix

    @property
    def info(self) -> BackendInfo:
        if self._info is None:
            raise RuntimeError("model not loaded yet")
        return self._info

    def queue_depth(self) -> int:
        return self._in_flight

    def alive(self) -> bool:
        """False once vLLM's engine core has died (it does not come back: restart the server)."""
        return self._engine is None or not self._engine.errored

    async def start(self) -> None:
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        raise NotImplementedError

    def _shutdown_engine(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            engine.shutdown()

    async def _request(self, submit: Callable[[str], AsyncIterator[Any]]) -> Any:
        """`submit(request_id)` (the engine's generate or encode) run to its final output, counted in flight."""
        if self._engine is None:
            raise RuntimeError("model not loaded yet")
        request_id = f"{self._request_prefix}-{next(self._ids)}"
        self._in_flight += 1
        try:
            return await final_output(self._engine, submit(request_id), request_id)
        finally:
            self._in_flight -= 1
