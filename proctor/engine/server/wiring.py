"""Config -> backends: what each config section is served by. A backend is built once and shared by every section
that names the same model the same way; sections that share one must agree on its settings."""

from __future__ import annotations

from proctor.engine.backends.base import Backend, Generator
from proctor.engine.backends.routed import GenerateAndScore
from proctor.engine.backends.settings import BackendSettings
from proctor.engine.backends.torch.classifier import TorchClassifier
from proctor.engine.backends.torch.generator import TorchGenerator
from proctor.engine.backends.vllm.generator import VllmGenerator
from proctor.engine.backends.vllm.hidden_scorer import VllmHiddenScorer
from proctor.engine.config import ConfigError, CriticConfig
from proctor.engine.cores.metrics import Metrics


def resolve_backend(backend: str) -> str:
    """`auto` is vLLM where it imports and CUDA is present (production generation), else torch."""
    if backend != "auto":
        return backend
    import importlib.util

    import torch

    return "vllm" if torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None else "torch"


class BackendSet:
    """The server's backends, keyed by what makes them the same (kind, model, device, dtype, ...)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.all: dict[tuple[str, ...], Backend] = {}
        self._generators: dict[tuple[str, ...], Generator] = {}
        self._first_settings: dict[tuple[str, ...], tuple[str, BackendSettings]] = {}  # backend -> who made it

    def generators(self) -> list[Generator]:
        return list(self._generators.values())

    def classifier(self, cc: CriticConfig) -> TorchClassifier:
        classifier = TorchClassifier(
            cc.model,
            device=cc.device,
            dtype=cc.dtype,
            valid_label=cc.valid_label,
            max_batch_items=cc.max_batch_items,
            max_batch_tokens=cc.max_batch_tokens,
            max_wait_ms=cc.max_wait_ms,
            on_batch=lambda items, tokens, slots: self.metrics.observe_batch(
                cc.model, "Classify", items, tokens, slots
            ),
        )
        self.all[("classifier", cc.model, cc.device, cc.dtype)] = classifier
        return classifier

    def generator(self, section: str, cfg: BackendSettings) -> tuple[Generator, list[Backend]]:
        """The section's Generator and the backends it is made of; a backend is shared by every section that names
        the same model the same way."""

        def torch_backend() -> TorchGenerator:
            key = ("torch", cfg.model, cfg.device, cfg.dtype, cfg.attn_implementation, cfg.score_packing)
            if key not in self._generators:

                def on_batch(rpc: str, items: int, tokens: int, slots: int) -> None:
                    self.metrics.observe_batch(cfg.model, rpc, items, tokens, slots)

                self._generators[key] = TorchGenerator(
                    cfg.model,
                    device=cfg.device,
                    dtype=cfg.dtype,
                    max_batch_seqs=cfg.max_batch_seqs,
                    max_score_tokens=cfg.max_score_tokens,
                    attn_implementation=cfg.attn_implementation,
                    score_packing=cfg.score_packing,
                    on_batch=on_batch,
                )
                self.all[key] = self._generators[key]
            self._same_settings(key, section, cfg, ("max_batch_seqs", "max_score_tokens"), "torch backend")
            backend = self._generators[key]
            assert isinstance(backend, TorchGenerator)
            return backend

        if resolve_backend(cfg.backend) == "torch":
            backend = torch_backend()
            return backend, [backend]
        key = ("vllm", cfg.model, cfg.dtype)
        if key not in self._generators:
            self._generators[key] = self.all[key] = VllmGenerator(cfg.model, cfg.dtype, cfg.vllm)
            self.metrics.include_vllm()
        self._same_settings(key, section, cfg, ("vllm",), "vLLM engine")
        vllm = self._generators[key]
        if cfg.scorer == "vllm":
            return vllm, [vllm]
        if cfg.scorer == "vllm-hidden":
            hidden_key = ("vllm-hidden", cfg.model, cfg.dtype, cfg.device)
            if hidden_key not in self.all:
                self.all[hidden_key] = VllmHiddenScorer(cfg.model, cfg.device, cfg.dtype, cfg.scorer_vllm)
            self._same_settings(hidden_key, section, cfg, ("scorer_vllm",), "vLLM engine")
            hidden = self.all[hidden_key]
            assert isinstance(hidden, VllmHiddenScorer)
            return GenerateAndScore(vllm, hidden), [vllm, hidden]
        scorer = torch_backend()
        return GenerateAndScore(vllm, scorer), [vllm, scorer]

    def _same_settings(
        self, key: tuple[str, ...], section: str, cfg: BackendSettings, names: tuple[str, ...], what: str
    ) -> None:
        """Sections that share a backend must configure it alike: a difference is an error, not a silent choice."""
        first_section, first = self._first_settings.setdefault(key, (section, cfg))
        for name in names:
            if getattr(first, name) != getattr(cfg, name):
                raise ConfigError(
                    f"{section}.{name}: differs from {first_section}.{name} for the same model; "
                    f"one {what} serves both, so give them the same settings"
                )
