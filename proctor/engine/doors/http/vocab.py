"""Token text for the HTTP routes: every token's text decoded once, then looked up (a top-20 prompt-logprobs
answer names ~20 tokens per position, too many to decode one by one), chat templates and detokenisation.
All of it runs off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from proctor.engine.backends.base import Generator


class Vocab:
    def __init__(self, backend: Generator, chat_template: str | None = None) -> None:
        self.backend = backend
        self.chat_template = chat_template  # the server's, over the tokenizer's own
        self._texts: list[str] | None = None
        self._building: asyncio.Task[list[str]] | None = None

    async def texts(self) -> list[str]:
        """Token id -> its text as vLLM shows one token alone: `decode([id])`, "" for a token that ends inside a
        UTF-8 character (a byte-level piece decoding to U+FFFD) and past the tokenizer's ids."""
        if self._texts is None:
            if self._building is None:
                self._building = asyncio.create_task(asyncio.to_thread(self._decode_all))
            self._texts = await asyncio.shield(self._building)
        return self._texts

    def _decode_all(self) -> list[str]:
        tokenizer = self.backend.tokenizer
        known = len(tokenizer)
        texts = ["" if t.endswith("\ufffd") else t for t in tokenizer.batch_decode([[i] for i in range(known)])]
        return texts + [""] * max(0, self.backend.info.vocab_size - known)

    async def decode(self, ids: Sequence[int]) -> str:
        return str(await asyncio.to_thread(self.backend.tokenizer.decode, list(ids)))

    async def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return await asyncio.to_thread(self.backend.tokenize, text, add_special_tokens)

    async def chat(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool,
        continue_final_message: bool,
        template: str | None,
        kwargs: dict[str, Any] | None,
    ) -> list[int]:
        """The conversation through the tokenizer's chat template, as token ids."""

        def render() -> list[int]:
            ids = self.backend.tokenizer.apply_chat_template(
                messages,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                chat_template=template or self.chat_template,
                tokenize=True,
                return_dict=False,
                **(kwargs or {}),
            )
            return [int(i) for i in ids]

        return await asyncio.to_thread(render)

    async def turn_end(self, messages: list[dict[str, Any]], kwargs: dict[str, Any] | None) -> list[int]:
        """The tokens the chat template writes after an assistant turn's content (`<|im_end|>` and a newline, for
        ChatML): an assistant turn after `messages` rendered closed and left open, the difference tokenized."""

        def render() -> list[int]:
            turn = [*messages, {"role": "assistant", "content": _MARK}]

            def text(left_open: bool) -> str:
                return str(
                    self.backend.tokenizer.apply_chat_template(
                        turn,
                        add_generation_prompt=False,
                        continue_final_message=left_open,
                        chat_template=self.chat_template,
                        tokenize=False,
                        **(kwargs or {}),
                    )
                )

            closed, left_open = text(False), text(True)
            if not closed.startswith(left_open):
                raise ValueError("the chat template writes an assistant turn's end before its content")
            return self.backend.tokenize(closed[len(left_open) :], False)

        return await asyncio.to_thread(render)


_MARK = "proctor-turn-content"  # stands for an assistant turn's content; the template writes it as it is
