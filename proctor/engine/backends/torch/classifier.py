"""The torch Classifier: any HF sequence classifier behind the dynamic batcher (length-sorted batches).

Two stages, as in text-embeddings-inference: pairs are tokenized in batches on a worker thread (the Rust tokenizer
runs many pairs at once, off the event loop), then the model batcher groups the encoded pairs by their real token
counts. The event loop only hands pairs along.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from proctor.engine.backends.loading import load, pick_device, pick_dtype
from proctor.engine.backends.torch.batching import DynamicBatcher
from proctor.engine.errors import ItemError
from proctor.engine.items import BackendInfo, Classified, TextPair

TOKENIZE_BATCH = 1024  # pairs per tokenizer call at most
# Where a fast tokenizer's Rust encoding holds a sequence classifier's inputs; the attention mask of an unpadded
# pair is all ones, and _pad makes it.
_ENCODING_FIELDS = {"input_ids": "ids", "token_type_ids": "type_ids"}


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
        self._tokenize: DynamicBatcher[TextPair, dict[str, list[int]]] | None = None
        self._rust: Any = None  # the fast tokenizer's own Rust tokenizer, when there is one
        self._fields: list[tuple[str, str]] = []  # (model input, Encoding attribute) read off its encodings

    @property
    def info(self) -> BackendInfo:
        if self._info is None:
            raise RuntimeError("model not loaded yet")
        return self._info

    def queue_depth(self) -> int:
        return sum(b.depth() for b in (self._tokenize, self._batcher) if b is not None)

    def alive(self) -> bool:
        return all(b is None or b.running() for b in (self._batcher, self._tokenize))

    async def start(self) -> None:
        import asyncio

        await asyncio.to_thread(self._load)
        items, tokens, wait = self._limits
        self._batcher = DynamicBatcher(
            self._run, lambda enc: len(enc["input_ids"]), items, tokens, wait, self._on_batch
        )
        self._batcher.start()
        # Whatever pairs are waiting go in one tokenizer call; more gather while it runs.
        self._tokenize = DynamicBatcher(self._encode_many, lambda pair: 1, TOKENIZE_BATCH, TOKENIZE_BATCH, 0.0)
        self._tokenize.start()

    def _load(self) -> None:
        from transformers import AutoModelForSequenceClassification

        from proctor.engine.backends.torch.skd_critic import register

        register()  # a critic `train-critic --recipe skd` wrote is a type of proctor's own
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
        tokenizer = self._tokenizer
        names = tokenizer.model_input_names
        if tokenizer.is_fast and set(names) <= {*_ENCODING_FIELDS, "attention_mask"}:
            # A copy of the Rust tokenizer, batch-encoding without transformers' per-item Python conversion (the
            # same ids: tested); never truncating or padding, whatever tokenizer.json says.
            from tokenizers import Tokenizer

            self._rust = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
            self._rust.no_truncation()
            self._rust.no_padding()
            self._fields = [(name, _ENCODING_FIELDS[name]) for name in names if name in _ENCODING_FIELDS]

    async def close(self) -> None:
        for batcher in (self._tokenize, self._batcher):
            if batcher is not None:
                await batcher.close()

    async def classify(self, pairs: list[TextPair], field: str) -> Classified:
        """P(valid) per pair, with the longest time before the model (tokenizing included), the longest inference
        time among them and the pairs' tokens. A pair over the model's length is an ItemError on `field`."""
        assert self._tokenize is not None and self._batcher is not None
        started = time.perf_counter()
        encoded = [enc for enc, _, _ in await self._tokenize.submit(pairs)]
        for enc in encoded:
            if len(enc["input_ids"]) > self._max_len:
                raise ItemError(
                    f"the pair is {len(enc['input_ids'])} tokens, over the critic's limit {self._max_len}; "
                    "nothing is truncated",
                    field,
                )
        tokenized = time.perf_counter() - started
        results = await self._batcher.submit(encoded)
        return Classified(
            [r[0] for r in results],
            tokenized + max(r[1] for r in results),
            max(r[2] for r in results),
            sum(len(enc["input_ids"]) for enc in encoded),
        )

    def _encode_many(self, pairs: list[TextPair]) -> list[dict[str, list[int]]]:
        if self._rust is None:
            enc = self._tokenizer([p.first for p in pairs], [p.second for p in pairs], truncation=False)
            names = list(enc.keys())
            return [{name: enc[name][i] for name in names} for i in range(len(pairs))]
        return [
            {name: getattr(e, field) for name, field in self._fields}
            for e in self._rust.encode_batch([(p.first, p.second) for p in pairs])
        ]

    def _pad(self, batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        """The batch as padded tensors and its attention mask, with the tokenizer's padding values and side
        (tokenizer.pad costs ~15 µs a row)."""
        lengths = [len(enc["input_ids"]) for enc in batch]
        width = max(lengths)
        fill = {"input_ids": self._tokenizer.pad_token_id, "token_type_ids": self._tokenizer.pad_token_type_id}
        left = self._tokenizer.padding_side == "left"

        def padded(row: list[int], value: int) -> list[int]:
            return [value] * (width - len(row)) + row if left else row + [value] * (width - len(row))

        tensors = {
            name: torch.tensor([padded(enc[name], fill.get(name, 0)) for enc in batch], dtype=torch.long)
            for name in batch[0]
            if name != "attention_mask"
        }
        if "attention_mask" in self._tokenizer.model_input_names:
            tensors["attention_mask"] = torch.tensor([padded([1] * n, 0) for n in lengths], dtype=torch.long)
        return {name: t.to(self._device) for name, t in tensors.items()}

    def _run(self, batch: list[dict[str, list[int]]]) -> list[float]:
        inputs = self._pad(batch)
        with torch.inference_mode():
            logits = self._model(**inputs).logits.float()
        if logits.shape[-1] == 1:
            probs = torch.sigmoid(logits[:, 0])
        else:
            probs = torch.softmax(logits, dim=-1)[:, self._valid_label]
        return [float(p) for p in probs.cpu()]
