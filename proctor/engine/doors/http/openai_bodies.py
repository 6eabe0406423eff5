"""The request bodies of the OpenAI / vLLM-compatible routes, as vLLM's server names their fields.

Strict types (1.7 or true is not an integer) and no unknown fields: a field this server does not implement
(`best_of`, `logit_bias`, `suffix`, `tools`, ...) gets a 400 naming it, never silence. Fields vLLM's clients send
at their neutral value (TRL sends `repetition_penalty: 1.0` and `min_p: 0.0` on every call) are accepted at that
value only.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

NonNegative = Annotated[int, Field(ge=0)]
# vLLM's -1 = every token of the vocabulary; the Teacher core refuses it past the server's limit, naming the limit.
TopK = Annotated[int, Field(ge=-1)]
TokenIds = list[NonNegative]
Stop = str | list[str] | None


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    @model_validator(mode="after")
    def _neutral_only(self) -> _Body:
        """Sampling knobs this server does not implement, accepted at their neutral value only."""
        for name, neutral in (("min_p", 0.0), ("repetition_penalty", 1.0)):
            value = getattr(self, name, None)
            if value is not None and value != neutral:
                raise ValueError(f"{name}: only {neutral} is supported by this server, got {value}")
        return self


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    include_usage: bool = False
    continuous_usage_stats: Literal[False] = False


class _Sampling(_Body):
    """The sampling fields shared by completions and chat completions."""

    model: str | None = None
    n: Annotated[int, Field(ge=1)] = 1
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: Stop = None
    stop_token_ids: TokenIds | None = None
    ignore_eos: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # an end-user id, for the caller's logs; nothing to do here
    return_token_ids: bool | None = None
    return_tokens_as_token_ids: bool | None = None
    skip_special_tokens: Literal[True] = True
    prompt_logprobs: TopK | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | TokenIds | list[TokenIds]
    max_tokens: NonNegative | None = 16
    logprobs: NonNegative | None = None
    echo: bool = False
    add_special_tokens: bool = True


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart]
    name: str | None = None

    def as_template_input(self) -> dict[str, Any]:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": self.role, "content": text}


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: NonNegative | None = None
    max_completion_tokens: NonNegative | None = None
    logprobs: bool = False
    top_logprobs: TopK | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    chat_template: str | None = None  # a Jinja template instead of the tokenizer's own
    chat_template_kwargs: dict[str, Any] | None = None
    tool_choice: Literal["none"] | None = None  # TRL sends "none" with tools; tools themselves are not supported


class TokenizeRequest(_Body):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    return_token_strs: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: TokenIds


class GenerateSamplingParams(_Body):
    """vLLM's SamplingParams as /inference/v1/generate takes them (the fields this server implements)."""

    n: Annotated[int, Field(ge=1)] = 1
    max_tokens: NonNegative | None = 16
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: Stop = None
    stop_token_ids: TokenIds | None = None
    ignore_eos: bool = False
    logprobs: NonNegative | None = None
    prompt_logprobs: TopK | None = None
    prompt_logprob_token_ids: list[list[int]] | None = None  # checked as vLLM checks them: vllm_probes.py
    prompt_logprob_start: int | None = None
    skip_special_tokens: Literal[True] = True
    detokenize: bool = True


class GenerateRequest(_Body):
    """vLLM's token-in, token-out route (prime-rl's teacher calls it)."""

    request_id: str | None = None
    token_ids: Annotated[TokenIds, Field(min_length=1)]
    sampling_params: GenerateSamplingParams = Field(default_factory=GenerateSamplingParams)
    model: str | None = None
    stream: Literal[False] = False
    return_token_ids: bool | None = None
    output_mode: Literal["tokens"] = "tokens"
