"""Server configuration: one YAML file, CLI flags on top. Unknown keys are errors, not silently ignored.

```yaml
server:   {host: 127.0.0.1, port: 50051, metrics_port: 9400, drain_grace_s: 30}
teacher:  {model: builtin:smollm2, backend: torch, device: auto}
```
A service is hosted when its section is present (`proctor serve` without a config hosts the built-in defaults).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

from proctor.engine.backends.settings import (
    ATTN_IMPLEMENTATIONS,
    BACKENDS,
    SCORE_PACKINGS,
    SCORERS,
    BackendSettings,
)
from proctor.engine.rewards import rrm
from proctor.engine.rewards.pipeline import RewardMode, RewardSettings
from proctor.engine.skd.critic_scoring import CriticSettings
from proctor.engine.skd.prompts import NameChoices
from proctor.engine.skd.relations import RELATIONS


class ConfigError(ValueError):
    pass


@dataclass
class TlsConfig:
    """TLS from PEM files; `client_ca_file` turns on mutual TLS (clients must present a certificate it signed)."""

    cert_file: str = ""
    """PEM certificate chain of the server"""
    key_file: str = ""
    """PEM private key of the server"""
    client_ca_file: str = ""
    """PEM CA that signs client certificates: mutual TLS"""

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError("server.tls: set both cert_file and key_file")
        if self.client_ca_file and not self.cert_file:
            raise ConfigError("server.tls.client_ca_file needs cert_file and key_file (mutual TLS is TLS first)")


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    """localhost by default: exposing the server is a deliberate choice"""
    port: int = 50051
    """0 = any free port (printed at start)"""
    metrics_host: str = "127.0.0.1"
    """the Prometheus endpoint's bind address"""
    metrics_port: int = 9400
    """0 = any free port; -1 = no metrics endpoint"""
    max_message_bytes: int = 16 * 1024 * 1024
    """per gRPC message, both ways (gRPC parses a request on the event loop: 64 MiB held Health for ~0.3 s)"""
    max_concurrent_calls: int = 256
    """more concurrent proctor calls get RESOURCE_EXHAUSTED; Health and reflection are not counted"""
    drain_grace_s: float = 30.0
    """SIGTERM: in-flight items get this long to finish"""
    tls: TlsConfig = field(default_factory=TlsConfig)
    auth_tokens_file: str = ""
    """one bearer token per line (# comments allowed). Bearer tokens: one per line in a file and/or comma-separated in
    an environment variable. Health stays open"""
    auth_tokens_env: str = ""
    """name of an environment variable with comma-separated tokens"""
    switch_interval_ms: float = 1.0
    """`proctor serve` sets the process's GIL switch interval to this: the longest a worker thread (a long rollout's
    rules, a tokenizer) holds the GIL while the event loop waits. Python's 5 ms let one caller's long rollouts hold
    Health for up to 250 ms on 2 cores; 1 ms held it under 25 ms for ~5% of the rules' throughput. 0 = Python's"""

    def __post_init__(self) -> None:
        if self.switch_interval_ms < 0:
            raise ConfigError("server.switch_interval_ms: must be >= 0 (0 = Python's default)")


@dataclass
class HttpConfig:
    """The HTTP front (OpenAI / vLLM-compatible teacher routes, the OpenRLHF reward route): off by default. It uses
    server.tls and server's bearer tokens, and the admission limits of the service each route calls."""

    host: str = "127.0.0.1"
    """its own bind address: exposing gRPC does not expose HTTP"""
    port: int = -1
    """-1 = off; 0 = any free port"""
    max_body_bytes: int = 16 * 1024 * 1024
    """a larger body gets 413 before it is read"""
    request_timeout_s: float = 600.0
    """a request's deadline (504 past it); 0 = none"""
    served_model_name: str = ""
    """the id /v1/models reports and `model` must match; "" = teacher.model"""
    chat_template: str = ""
    """Jinja, or a file of it, over the tokenizer's template (vLLM's --chat-template)"""
    trust_request_chat_template: bool = False
    """a request may bring its own chat_template (vLLM's flag)"""

    def __post_init__(self) -> None:
        if self.port < -1:
            raise ConfigError("http.port: must be -1 (off), 0 (any free port) or a port number")
        if self.max_body_bytes < 1:
            raise ConfigError("http.max_body_bytes: must be >= 1")
        if self.request_timeout_s < 0:
            raise ConfigError("http.request_timeout_s: must be >= 0 (0 = none)")


@dataclass
class ServiceLimits:
    """Admission control shared by every service.

    `max_queued_items` bounds the items admitted and not yet answered across all calls of the service: past it an
    item is answered RESOURCE_EXHAUSTED at once. `stream_window` bounds the items one call holds, from read until
    their result is sent, and `stream_window_bytes` the results computed and not yet sent: past either the server
    stops reading that stream until the caller reads (backpressure, not an error).
    """

    max_queued_items: int = 4096
    """items admitted and not yet answered, across the service's calls; past it, RESOURCE_EXHAUSTED at once"""
    stream_window: int = 1024
    """items one call holds from read until their result is sent; past it the server stops reading (backpressure)"""
    stream_window_bytes: int = 64 * 1024 * 1024
    """bytes of results computed and not yet sent, per call; the server stops reading past it (backpressure)"""
    max_items_per_stream: int = 1_000_000
    """past it, items get RESOURCE_EXHAUSTED: open a new stream"""


def _check_backend_settings(section: str, settings: BackendSettings) -> None:
    if settings.backend not in BACKENDS:
        raise ConfigError(f"{section}.backend: {settings.backend!r} is not one of {', '.join(BACKENDS)}")
    if settings.scorer not in SCORERS:
        raise ConfigError(f"{section}.scorer: {settings.scorer!r} is not one of {', '.join(SCORERS)}")
    if settings.scorer != "torch" and settings.backend != "vllm":
        raise ConfigError(f"{section}.scorer: {settings.scorer} needs {section}.backend: vllm")
    if settings.attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(f"{section}.attn_implementation: {settings.attn_implementation!r} is not one of "
                          f"{', '.join(ATTN_IMPLEMENTATIONS)}")  # fmt: skip
    if settings.score_packing not in SCORE_PACKINGS:
        raise ConfigError(
            f"{section}.score_packing: {settings.score_packing!r} is not one of {', '.join(SCORE_PACKINGS)}"
        )
    for name in ("max_batch_seqs", "max_score_tokens"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"{section}.{name}: must be >= 1")


@dataclass
class RemoteCriticConfig:
    """How GenerateTriples reaches a Critic in another proctor server (`teacher.critic` an address)."""

    ca_file: str = ""
    """PEM of the CA that signed the critic server's certificate; "" = plaintext"""
    cert_file: str = ""
    """this server's client certificate, for a critic server that requires mutual TLS"""
    key_file: str = ""
    """the key of cert_file"""
    token_env: str = ""
    """an environment variable holding the bearer token the critic server accepts; "" = none"""
    timeout_s: float = 600.0
    """one event's triples, scored on one stream, within this"""

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ConfigError("teacher.remote_critic.timeout_s: must be > 0")


@dataclass
class TeacherConfig(BackendSettings):
    """The Teacher service: Generate, Score and GenerateTriples on a causal LM."""

    max_prompt_tokens: int = 0
    """0 = the model's context length"""
    default_max_tokens: int = 16
    """a request's max_tokens when it sets none"""
    max_n: int = 128
    """the SKD event prompt samples n = 100"""
    max_top_logprobs: int = 256
    """most top log-probs per position a request may ask for (Generate and Score)"""
    max_group_size: int = 1024
    """continuations per Score group"""
    critic: str = "local"
    """GenerateTriples' critic: "local" (this server's Critic), an address, or "" (none)"""
    remote_critic: RemoteCriticConfig = field(default_factory=RemoteCriticConfig)
    """TLS and token for a critic at an address"""
    max_triples_events: int = 1000
    """most events one GenerateTriples call may ask for"""
    skd_names: NameChoices = field(default_factory=NameChoices)
    """GenerateTriples' names in the inference prompts: the authors' rule unless a field is set true (ours)"""
    limits: ServiceLimits = field(default_factory=ServiceLimits)

    def __post_init__(self) -> None:
        _check_backend_settings("teacher", self)


@dataclass
class StepsConfig:
    """The training step of trainers that cannot send it, counted per run (engine/rewards/steps.py)."""

    rollouts_per_step: int = 0
    """a run's default (prompts per step x samples); 0 = each run must say"""
    state_dir: str = ""
    """where the counts live: survive restarts, shared by replicas on it; "" = memory only"""
    store: str = ""
    """redis://host:port/db (or rediss://, unix://): replicas on several machines share each run's count; "" = none"""
    max_runs: int = 1024
    """runs tracked at once; a new key past it is refused"""

    def __post_init__(self) -> None:
        if self.rollouts_per_step < 0:
            raise ConfigError("reward.steps.rollouts_per_step: must be >= 0")
        if self.max_runs < 1:
            raise ConfigError("reward.steps.max_runs: must be >= 1")
        if self.store:
            url = urlsplit(self.store)
            if not ((url.scheme in ("redis", "rediss") and url.hostname) or (url.scheme == "unix" and url.path)):
                raise ConfigError(
                    f"reward.steps.store: {self.store!r} is not a redis://host:port/db, rediss:// or unix:// URL"
                )
            if self.state_dir:
                raise ConfigError("reward.steps: set store or state_dir, not both (the count lives in one place)")


@dataclass
class OpenRLHFConfig:
    """OpenRLHF's /reward route: what a rollout whose reward cannot be computed gets (services/http/openrlhf.py)."""

    on_error: str = "fallback"
    """fallback: the reward below, flagged and counted; fail: 422 (OpenRLHF then crashes)"""
    fallback_reward: float = -1.0
    """the reward of a malformed rollout"""

    def __post_init__(self) -> None:
        if self.on_error not in ("fallback", "fail"):
            raise ConfigError(f"reward.openrlhf.on_error: {self.on_error!r} is not fallback or fail")
        if self.fallback_reward != self.fallback_reward or abs(self.fallback_reward) == float("inf"):
            raise ConfigError("reward.openrlhf.fallback_reward: must be a finite number")


@dataclass
class RewardConfig(BackendSettings, RewardSettings):
    """The RewardModel service. `model` is the RRM (any HF causal LM); "" hosts rules-only rewards. The RRM's batch
    limits are its own (max_batch_seqs, max_score_tokens); a torch backend shared with the teacher needs the same."""

    steps: StepsConfig = field(default_factory=StepsConfig)
    openrlhf: OpenRLHFConfig = field(default_factory=OpenRLHFConfig)
    limits: ServiceLimits = field(default_factory=ServiceLimits)

    def __post_init__(self) -> None:
        _check_backend_settings("reward", self)
        modes = [m.value for m in RewardMode]
        if self.mode not in modes:
            raise ConfigError(f"reward.mode: {self.mode!r} is not one of {', '.join(modes)}")
        if self.mode != RewardMode.RULES and not self.model:
            raise ConfigError(f"reward.mode: {self.mode} needs reward.model (an RRM); use mode: rules without one")
        if self.aggregation not in rrm.aggregations():
            raise ConfigError(f"reward.aggregation: {self.aggregation!r} is not one of {', '.join(rrm.aggregations())}")
        if self.total_steps < 0:
            raise ConfigError("reward.total_steps: must be >= 0")
        if self.max_rollout_chars < 1:
            raise ConfigError("reward.max_rollout_chars: must be >= 1")


@dataclass
class CriticConfig(CriticSettings):
    """The Critic service: any HF sequence classifier (1 sigmoid logit, or softmax over 2 labels)."""

    model: str = "builtin:critic"
    """trained once by `proctor train-critic` on the shipped set, then cached"""
    device: str = "auto"
    """auto = cuda if available, else cpu"""
    dtype: str = "auto"
    """auto = bfloat16 on cuda, float32 on cpu"""
    valid_label: int = 1
    """with 2 labels: the index of "valid" """
    max_batch_items: int = 256
    """pairs per model batch"""
    max_batch_tokens: int = 16384
    """padded token slots per model batch (pairs x the longest)"""
    max_wait_ms: float = 2.0
    """after the first pair, for more to batch with; what waits is cut by length"""
    limits: ServiceLimits = field(default_factory=ServiceLimits)

    def __post_init__(self) -> None:
        if self.cutoff_level not in ("high", "medium"):
            raise ConfigError(f"critic.cutoff_level: {self.cutoff_level!r} is not high or medium")
        unknown = sorted(set(self.cutoffs) - set(RELATIONS))
        if unknown:
            raise ConfigError(f"critic.cutoffs: unknown relation(s) {', '.join(unknown)}")
        if self.draws < 1:
            raise ConfigError("critic.draws: must be >= 1")


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    teacher: TeacherConfig | None = None
    critic: CriticConfig | None = None
    reward: RewardConfig | None = None

    def services(self) -> list[str]:
        return [name for name in ("teacher", "critic", "reward") if getattr(self, name) is not None]


T = TypeVar("T")


def _build(cls: type[T], data: Any, path: str, defaults: T | None = None) -> T:
    """`cls` from a mapping; keys left out keep `defaults` (the field's own default for a nested section)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    kwargs: dict[str, Any] = {}
    if defaults is None:
        defaults = cls()
    for name, value in data.items():
        default = getattr(defaults, name)
        where = f"{path}.{name}"
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, where, default)
        elif isinstance(default, float) and type(value) is int:
            kwargs[name] = float(value)
        elif type(value) is not type(default):
            raise ConfigError(f"{where}: expected {type(default).__name__}, got {value!r}")
        else:
            kwargs[name] = value
    return dataclasses.replace(defaults, **kwargs)  # type: ignore[type-var]


def load_config(path: str | Path | None = None, default_services: dict[str, Any] | None = None) -> Config:
    """Read a YAML config; without one, host `default_services` (section name -> mapping)."""
    if path is None:
        data: dict[str, Any] = {"server": {}, **(default_services or {})}
    else:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    known = {"server", "http", "teacher", "critic", "reward"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return Config(
        server=_build(ServerConfig, data.get("server"), "server"),
        http=_build(HttpConfig, data.get("http"), "http"),
        teacher=_build(TeacherConfig, data["teacher"], "teacher") if "teacher" in data else None,
        critic=_build(CriticConfig, data["critic"], "critic") if "critic" in data else None,
        reward=_build(RewardConfig, data["reward"], "reward") if "reward" in data else None,
    )
