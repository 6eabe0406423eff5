"""Prometheus metrics of one server (its own registry, so several servers can live in one process).

Names follow Prometheus conventions: `proctor_` prefix, base units in the name, `_total` on counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

# Item latencies run from sub-millisecond (rule rewards) to minutes (long generations).
_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._vllm_forwarded = False
        self.requests = Counter(
            "proctor_requests", "Calls answered, by final gRPC status code.", ["service", "rpc", "code"], registry=r
        )
        self.items = Counter(
            "proctor_items", "Stream items answered, by per-item status code.", ["service", "rpc", "code"], registry=r
        )
        self.inflight_items = Gauge(
            "proctor_inflight_items", "Items admitted and not yet answered.", ["service"], registry=r
        )
        self.queue_depth = Gauge(
            "proctor_queue_depth_items",
            "Items waiting in the backend queue (cf. vLLM's vllm:num_requests_waiting).",
            ["service"],
            registry=r,
        )
        self.batch_size = Histogram(
            "proctor_batch_size_items", "Items per backend batch.", ["model", "rpc"], buckets=_BATCH, registry=r
        )
        self.batch_tokens = Histogram(
            "proctor_batch_tokens",
            "Real (unpadded) tokens per backend batch.",
            ["model", "rpc"],
            buckets=(16, 64, 256, 1024, 4096, 16384, 65536, 262144),
            registry=r,
        )
        self.batch_padding = Histogram(
            "proctor_batch_padding_ratio",
            "Share of a batch's token slots that are padding (0 = packed).",
            ["model", "rpc"],
            buckets=(0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0),
            registry=r,
        )
        self.queue_seconds = Histogram(
            "proctor_queue_seconds",
            "Time from admission to the backend picking the item up.",
            ["service", "rpc"],
            buckets=_SECONDS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "proctor_inference_seconds",
            "Time the item spent in the model.",
            ["service", "rpc"],
            buckets=_SECONDS,
            registry=r,
        )
        self.item_seconds = Histogram(
            "proctor_item_seconds",
            "Time from receiving an item to sending its result (cf. vLLM's vllm:e2e_request_latency_seconds).",
            ["service", "rpc"],
            buckets=_SECONDS,
            registry=r,
        )
        self.tokens = Counter(
            "proctor_tokens",
            "Tokens processed: kind=prompt|generated|scored.",
            ["service", "rpc", "kind"],
            registry=r,
        )
        self.gpu_memory = Gauge(
            "proctor_gpu_memory_bytes",
            "GPU memory held by this process's tensors (torch.cuda.memory_allocated), per device.",
            ["device"],
            registry=r,
        )
        self.gpu_memory_peak = Gauge(
            "proctor_gpu_memory_peak_bytes",
            "Peak GPU memory held by this process's tensors since it started (torch.cuda.max_memory_allocated).",
            ["device"],
            registry=r,
        )
        self.auth_failures = Counter(
            "proctor_auth_failures",
            "Requests refused for a missing or wrong bearer token, by transport (grpc, http).",
            ["transport"],
            registry=r,
        )
        self.reward_fallbacks = Counter(
            "proctor_reward_fallbacks",
            "Rollouts (OpenRLHF's and slime's routes) answered with reward.openrlhf.fallback_reward because their "
            "reward could not be computed, by the request field at fault (internal: the server's own failure).",
            ["field"],
            registry=r,
        )
        self.http_refusals = Counter(
            "proctor_http_refusals",
            "HTTP requests on a service's route answered 4xx, by route and status (the reason is logged at INFO).",
            ["route", "status"],
            registry=r,
        )
        self.serving = Gauge(
            "proctor_serving", "1 while the service reports SERVING on grpc.health.v1.", ["service"], registry=r
        )

    def observe_times(self, service: str, rpc: str, queue_s: float, inference_s: float) -> None:
        """One item's time in the backend queue and in inference."""
        self.queue_seconds.labels(service, rpc).observe(queue_s)
        self.inference_seconds.labels(service, rpc).observe(inference_s)

    def count_tokens(self, service: str, rpc: str, *, prompt: int = 0, generated: int = 0, scored: int = 0) -> None:
        """The tokens one item processed, by kind; a kind with none adds nothing."""
        for kind, count in (("prompt", prompt), ("generated", generated), ("scored", scored)):
            if count:
                self.tokens.labels(service, rpc, kind).inc(count)

    def observe_batch(self, model: str, rpc: str, items: int, tokens: int, slots: int) -> None:
        """One backend batch: `tokens` real tokens in `slots` token positions (padding included)."""
        self.batch_size.labels(model, rpc).observe(items)
        self.batch_tokens.labels(model, rpc).observe(tokens)
        self.batch_padding.labels(model, rpc).observe(1.0 - tokens / slots if slots else 0.0)

    def include_vllm(self) -> None:
        """Serve vLLM's own `vllm:*` metrics (KV-cache use, running / waiting requests, time to first token...)
        on this endpoint too; vLLM registers them in prometheus_client's global registry."""
        if not self._vllm_forwarded:
            self.registry.register(_Forward(REGISTRY, "vllm:"))
            self._vllm_forwarded = True

    def watch_queue(self, service: str, depth: Callable[[], int]) -> None:
        self.queue_depth.labels(service).set_function(depth)


class _Forward:
    """A collector that re-exports another registry's metrics whose names start with a prefix."""

    def __init__(self, source: CollectorRegistry, prefix: str) -> None:
        self.source = source
        self.prefix = prefix

    def collect(self) -> Iterator[Metric]:
        return (metric for metric in self.source.collect() if metric.name.startswith(self.prefix))

    def describe(self) -> list[Metric]:
        return []  # described lazily: vLLM registers its metrics only when its engine starts
