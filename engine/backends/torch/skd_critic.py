"""The authors' critic architecture (PAPERS.md §1.4): an encoder's pooled output -> Dense(512) -> GELU -> Dense(1).

A transformers model of its own type (`proctor_skd_critic`), registered with the Auto classes so that a folder
`proctor train-critic --recipe skd` wrote loads like any sequence classifier: AutoModelForSequenceClassification
gives it back, with one logit whose sigmoid is P(valid). Dropout (0.1, the authors') sits before each Dense.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PreTrainedConfig, PreTrainedModel
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import SequenceClassifierOutput

MODEL_TYPE = "proctor_skd_critic"


class SkdCriticConfig(PreTrainedConfig):  # type: ignore[misc]  # transformers is untyped here
    model_type = MODEL_TYPE
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "encoder": SubConfigSpec(config_class=AutoConfig, model_type="roberta")
    }
    encoder: PreTrainedConfig | dict[str, Any] | None = None
    head_size: int = 512
    head_dropout: float = 0.1

    # What a server reads off a critic's config, from the encoder's.
    @property
    def vocab_size(self) -> int:
        return int(self.encoder.vocab_size)  # type: ignore[union-attr]

    @property
    def max_position_embeddings(self) -> int:
        return int(self.encoder.max_position_embeddings)  # type: ignore[union-attr]


class SkdCritic(PreTrainedModel):  # type: ignore[misc]
    config_class = SkdCriticConfig
    base_model_prefix = "encoder"

    def __init__(self, config: SkdCriticConfig) -> None:
        super().__init__(config)
        self.encoder = AutoModel.from_config(config.encoder)  # with its pooler
        self.dropout = torch.nn.Dropout(config.head_dropout)
        self.hidden = torch.nn.Linear(config.encoder.hidden_size, config.head_size)  # type: ignore[union-attr]
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
    config = SkdCriticConfig(encoder=encoder.config.to_dict(), head_size=head_size, head_dropout=head_dropout)
    config.num_labels = 1
    model = SkdCritic(config)
    model.encoder.load_state_dict(encoder.state_dict())
    return model
