"""The torch Classifier: any HF sequence classifier behind the dynamic batcher (length-sorted batches)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from proctor.engine.backends.loading import load, pick_device, pick_dtype
from proctor.engine.batching import DynamicBatcher
from proctor.engine.critic_input import TextPair
from proctor.engine.errors import ItemError
from proctor.engine.types import BackendInfo


class TorchClassifier:
    """P(valid) of text pairs. One output logit -> sigmoid; two -> softmax, `valid_label` is the valid class."""

    def __init__(
        self,
        model: str,
        device: str = "auto",
        dtype: str = "auto",
        valid_label: int = 1,
        max_batch_items: int = 256,
        max_batch_tokens: int = 16384,
        max_wait_ms: float = 2.0,
        on_batch: Callable[[int, int, int], None] | None = None,
    ) -> None:
        self._model_ref = model
        self._device = pick_device(device)
        self._dtype = pick_dtype(dtype, self._device)
        self._valid_label = valid_label
        self._limits = (max_batch_items, max_batch_tokens, max_wait_ms / 1000)
        self._on_batch = on_batch
        self._model: Any = None
        self._tokenizer: Any = None
        self._info: BackendInfo | None = None
        self._batcher: DynamicBatcher[dict[str, list[int]], float] | None = None

    @property
    def info(self) -> BackendInfo:
        if self._info is None:
            raise RuntimeError("model not loaded yet")
        return self._info

    def queue_depth(self) -> int:
        return self._batcher.depth() if self._batcher is not None else 0

    def alive(self) -> bool:
        return self._batcher is None or self._batcher.running()

    async def start(self) -> None:
        import asyncio

        await asyncio.to_thread(self._load)
        items, tokens, wait = self._limits
        self._batcher = DynamicBatcher(
            self._run, lambda enc: len(enc["input_ids"]), items, tokens, wait, self._on_batch
        )
        self._batcher.start()

    def _load(self) -> None:
        from transformers import AutoModelForSequenceClassification

        loaded = load(AutoModelForSequenceClassification, self._model_ref, self._device, self._dtype)
        model, self._model, self._tokenizer = loaded.model, loaded.model, loaded.tokenizer
        labels = int(model.config.num_labels)
        if labels not in (1, 2):
            raise ValueError(f"{loaded.path}: a critic needs 1 (sigmoid) or 2 (softmax) output labels, not {labels}")
        if labels == 2 and self._valid_label not in (0, 1):
            raise ValueError(f"critic.valid_label must be 0 or 1, not {self._valid_label}")
        self._max_len = int(
            min(self._tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", 512))
        )
        self._info = loaded.info(int(model.config.vocab_size), self._max_len)

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()

    def encode(self, pair: TextPair, field: str) -> dict[str, list[int]]:
        enc = self._tokenizer(pair.first, pair.second, truncation=False)
        if len(enc["input_ids"]) > self._max_len:
            raise ItemError(
                f"the pair is {len(enc['input_ids'])} tokens, over the critic's limit {self._max_len}; "
                "nothing is truncated",
                field,
            )
        return dict(enc)

    async def classify(self, encoded: list[dict[str, list[int]]]) -> tuple[list[float], float, float]:
        """P(valid) per encoded pair, with the longest queue and inference time among them."""
        assert self._batcher is not None
        results = await self._batcher.submit(encoded)
        return [r[0] for r in results], max(r[1] for r in results), max(r[2] for r in results)

    def _run(self, batch: list[dict[str, list[int]]]) -> list[float]:
        padded = self._tokenizer.pad(batch, return_tensors="pt")
        with torch.inference_mode():
            logits = self._model(**{k: v.to(self._device) for k, v in padded.items()}).logits.float()
        if logits.shape[-1] == 1:
            probs = torch.sigmoid(logits[:, 0])
        else:
            probs = torch.softmax(logits, dim=-1)[:, self._valid_label]
        return [float(p) for p in probs.cpu()]
