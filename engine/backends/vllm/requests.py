"""One vLLM request run to its final output, with vLLM's failures turned into proctor's item errors: shared by the
vLLM backends (generation, and the pooling engine of the hidden-state scorer). vLLM is imported on the first call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from proctor.engine.errors import ItemError


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
