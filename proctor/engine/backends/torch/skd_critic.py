"""The authors' critic architecture (paper rules §1.4): an encoder's pooled output -> Dense(512) -> GELU -> Dense(1).

A transformers model of its own type (`proctor_skd_critic`), registered with the Auto classes so that a folder
`proctor train-critic --recipe skd` wrote loads like any sequence classifier: AutoModelForSequenceClassification
gives it back, with one logit whose sigmoid is P(valid). Dropout (0.1, the authors') sits before each Dense.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

MODEL_TYPE = "proctor_skd_critic"
DEFAULT_ENCODER = "roberta"  # the authors' (roberta-large-mnli); what a bare SkdCriticConfig() holds


class SkdCriticConfig(PretrainedConfig):  # type: ignore[misc]  # transformers is untyped here
    """An encoder's config nested under `encoder`, and the head's sizes.

    Written as transformers' composite configs were up to 5.19 (EncoderDecoderConfig's way: `sub_configs` names the
    nested config, which the class builds itself from a dict or a config) and with an `__init__` of its own, as remote
    code's configs are: that works whether PretrainedConfig is a plain class (4.x) or a dataclass (5.x). The newer
    `sub_configs_defaults` / `SubConfigSpec` (5.24 has them, 5.19 not) would tie the critic to the newest releases.
    """

    model_type = MODEL_TYPE
    sub_configs: ClassVar[dict[str, type]] = {"encoder": AutoConfig}

    def __init__(
        self,
        encoder: PretrainedConfig | dict[str, Any] | None = None,
        head_size: int = 512,
        head_dropout: float = 0.1,
        **kwargs: Any,
    ) -> None:
        if encoder is None:
            encoder = AutoConfig.for_model(DEFAULT_ENCODER)
        elif isinstance(encoder, dict):  # as config.json holds it
            fields = dict(encoder)  # the caller's dict is left as it was
            if "model_type" not in fields:
                raise ValueError("SkdCriticConfig.encoder: a dict needs the encoder's `model_type`")
            encoder = AutoConfig.for_model(fields.pop("model_type"), **fields)
        self.encoder: PretrainedConfig = encoder
        self.head_size = head_size
        self.head_dropout = head_dropout
        super().__init__(**kwargs)

    # What a server reads off a critic's config, from the encoder's.
    @property
    def vocab_size(self) -> int:
        return int(self.encoder.vocab_size)

    @property
    def max_position_embeddings(self) -> int:
        return int(self.encoder.max_position_embeddings)


class SkdCritic(PreTrainedModel):  # type: ignore[misc]
    config_class = SkdCriticConfig
    base_model_prefix = "encoder"

    def __init__(self, config: SkdCriticConfig) -> None:
        super().__init__(config)
        self.encoder = AutoModel.from_config(config.encoder)  # with its pooler
        self.dropout = torch.nn.Dropout(config.head_dropout)
        self.hidden = torch.nn.Linear(config.encoder.hidden_size, config.head_size)
        self.score = torch.nn.Linear(config.head_size, 1)
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """The head as Keras starts a Dense layer: Glorot-uniform weights, zero bias (the output bias is then set
        to the prior's log-odds by the trainer). The encoder comes from its checkpoint."""
        if module is getattr(self, "hidden", None) or module is getattr(self, "score", None):
            assert isinstance(module, torch.nn.Linear)
            torch.nn.init.xavier_uniform_(module.weight)
            torch.nn.init.zeros_(module.bias)
        elif module is not self and hasattr(self, "encoder"):
            self.encoder._init_weights(module)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        pooled = self.encoder(**{k: v for k, v in inputs.items() if v is not None}).pooler_output
        hidden = torch.nn.functional.gelu(self.hidden(self.dropout(pooled)))  # exact GELU, as Keras' default
        return SequenceClassifierOutput(logits=self.score(self.dropout(hidden)))


def register() -> None:
    """Make AutoConfig / AutoModelForSequenceClassification know the type (idempotent)."""
    try:
        AutoConfig.register(MODEL_TYPE, SkdCriticConfig)
        AutoModelForSequenceClassification.register(SkdCriticConfig, SkdCritic)
    except ValueError:  # already registered
        pass


def from_encoder(path: str, head_size: int = 512, head_dropout: float = 0.1) -> SkdCritic:
    """A new critic on a pretrained encoder (its pooler included; a checkpoint without pooler weights starts it at
    random, as the authors' TFRobertaModel did from roberta-large-mnli)."""
    encoder = AutoModel.from_pretrained(path)
    if getattr(encoder, "pooler", None) is None:
        raise ValueError(f"{path}: the encoder has no pooler; the skd recipe reads the pooled output")
    config = SkdCriticConfig(encoder=encoder.config, head_size=head_size, head_dropout=head_dropout, num_labels=1)
    model = SkdCritic(config)
    model.encoder.load_state_dict(encoder.state_dict())
    return model
