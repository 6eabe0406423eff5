"""The torch Generator: a transformers causal LM driven by proctor's own batching, in one engine thread.

The engine thread owns the model (one forward at a time) and takes work in batches:
- generation runs in waves: the prompts of a wave are prefilled together (left-padded), each prompt's KV cache is
  shared by its `n` samples, and decoding steps the whole wave with the KV cache; a sequence that finishes or
  whose caller cancelled is dropped from the batch at the next step, and a prompt's result is sent as soon as
  its last sample ends. New prompts join at the next wave (vLLM is the continuous-batching backend);
- scoring runs the model to hidden states and turns only the target positions into log-probs
  (`proctor.kernels`), never materialising [tokens, vocab] logits for the whole batch;
- a Score that also asks Generate's one next token (`score_sample`) takes it from the last position of the same
  forward, sampled as a generation wave samples its first token.
How each round's batches form is batch_policy.py; the forward passes are forward.py; sampling and stop handling
decoding.py. This file is the queue and the engine thread: the asyncio side talks to it through futures resolved
with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

from proctor.engine.backends.lm_head_weights import check_plain_lm_head
from proctor.engine.backends.loading import eos_token_ids, load, pick_device, pick_dtype
from proctor.engine.backends.torch.batch_policy import (
    BatchPolicy,
    ItemT,
    Job,
    Queues,
    ResultT,
)
from proctor.engine.backends.torch.decoding import Decoding
from proctor.engine.backends.torch.forward import ForwardPasses
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
    ScoreSample,
    ScoreSampleItem,
)

log = logging.getLogger(__name__)


# Attentions that take packed sequences without a dense mask over the packed row.
VARLEN = ("flash_attention_2", "flash_attention_3", "flex_attention")


class TorchGenerator:
    def __init__(
        self,
        model: str,
        device: str = "auto",
        dtype: str = "auto",
        max_batch_seqs: int = 64,
        max_score_tokens: int = 16384,
        seed: int = 0,
        on_batch: Callable[[str, int, int, int], None] | None = None,
        attn_implementation: str = "sdpa",
        score_packing: str = "auto",
    ) -> None:
        """`on_batch(rpc, items, tokens, slots)` is told each batch's size, real tokens and padded slots.
        `score_packing` (auto | packed | padded) and `attn_implementation`: see BackendSettings."""
        self._model_ref = model
        self._device = pick_device(device)
        self._dtype = pick_dtype(dtype, self._device)
        self._attn_implementation = attn_implementation
        self._packed = score_packing == "packed" or (score_packing == "auto" and attn_implementation in VARLEN)
        self.policy = BatchPolicy(max_batch_seqs, max_score_tokens, self._packed)
        self._unseeded = torch.Generator().manual_seed(seed)
        self._on_batch = on_batch or (lambda rpc, items, tokens, slots: None)
        self._queues = Queues()
        self._cv = threading.Condition()
        self._stopping = False
        self._score_refusal = ""  # why the fused Score kernels cannot read this model's logits, if they cannot
        self._thread: threading.Thread | None = None
        self._model: Any = None
        self._tokenizer: Any = None
        self._info: BackendInfo | None = None

    # ---- lifecycle -------------------------------------------------------------------------------------------

    @property
    def info(self) -> BackendInfo:
        if self._info is None:
            raise RuntimeError("model not loaded yet")
        return self._info

    async def start(self) -> None:
        await asyncio.to_thread(self._load)
        self._thread = threading.Thread(target=self._run, name="proctor-torch-engine", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM

        loaded = load(AutoModelForCausalLM, self._model_ref, self._device, self._dtype, self._attn_implementation)
        model, self._model, self._tokenizer = loaded.model, loaded.model, loaded.tokenizer
        # transformers 5.2x renamed `past_key_values` to `cache`; older releases only know the former.
        cache_kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        config = model.config
        eos_ids = eos_token_ids(config, self._tokenizer)
        pad_id = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else eos_ids[0]
        vocab = int(model.get_output_embeddings().weight.shape[0])
        self._info = loaded.info(vocab, int(getattr(config, "max_position_embeddings", 2048)), eos_ids)
        decoding = Decoding(self._tokenizer, tuple(eos_ids), self._device, self._unseeded)
        self._forward = ForwardPasses(
            model, self._device, pad_id, vocab, cache_kwarg, self.policy, decoding, self._on_batch
        )
        try:
            check_plain_lm_head(config)
        except ValueError as exc:
            # Generation reads the model's own logits and stays right; the fused Score kernels would not.
            self._score_refusal = str(exc)
            log.warning("%s: Score, groups and probes are refused on this model", exc)

    async def close(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    # ---- asyncio side ----------------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def tokenize(self, text: str, add_special_tokens: bool) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def queue_depth(self) -> int:
        return len(self._queues)

    def alive(self) -> bool:
        return self._thread is None or self._thread.is_alive() or self._stopping

    async def generate(self, item: GenerateItem) -> Generation:
        return (await self._submit(self._queues.generate, [item]))[0]

    async def generate_many(self, items: list[GenerateItem]) -> list[Generation]:
        return await self._submit(self._queues.generate, items)

    async def score(self, item: ScoreItem) -> ScoreOutput:
        self._check_scorable()
        return (await self._submit(self._queues.score, [item]))[0]

    async def score_sample(self, item: ScoreSampleItem) -> ScoreSample:
        """The item's Score and, from the same forward, Generate's answer of one token after its sequence: the same
        token (same seed, same rules) and log-probs as `generate` gives for that prompt."""
        self._check_scorable()
        return (await self._submit(self._queues.score_samples, [item]))[0]

    async def score_group(self, item: ScoreGroupItem) -> GroupOutput:
        self._check_scorable()
        return (await self._submit(self._queues.score_groups, [item]))[0]

    async def probe_group(self, item: ProbeGroupItem) -> GroupOutput:
        self._check_scorable()
        return (await self._submit(self._queues.probe_groups, [item]))[0]

    def _check_scorable(self) -> None:
        if self._score_refusal:
            raise ItemError(self._score_refusal, code="FAILED_PRECONDITION")

    async def _submit(self, queue: collections.deque[Job[ItemT, ResultT]], items: Sequence[ItemT]) -> list[ResultT]:
        """Queue the items at once, so that the engine takes them into the same batch."""
        loop = asyncio.get_running_loop()
        jobs = [Job(item=item, future=loop.create_future(), loop=loop) for item in items]
        with self._cv:
            if self._stopping:
                raise RuntimeError("backend is shut down")
            queue.extend(jobs)
            self._cv.notify()
        try:
            return list(await asyncio.gather(*(job.future for job in jobs)))
        except asyncio.CancelledError:
            for job in jobs:
                job.cancelled = True  # the engine drops them from its batch at the next step
            raise

    # ---- engine thread ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queues and not self._stopping:
                    self._cv.wait()
                if self._stopping and not self._queues:
                    return
                batch = self.policy.take(self._queues)
            try:
                with torch.inference_mode():
                    for group in batch.score_groups:
                        self._forward.score_group(group)
                    for probes in batch.probe_groups:
                        self._forward.probe_group(probes)
                    if batch.scores:
                        self._forward.score_batch(batch.scores)
                    if batch.score_samples:
                        self._forward.score_sample_batch(batch.score_samples)
                    if batch.wave:
                        self._forward.generate_wave(batch.wave)
            except Exception as exc:  # a model failure fails the batch, not the server
                log.exception("backend batch failed")
                for job in batch.jobs():
                    job.fail(exc)
