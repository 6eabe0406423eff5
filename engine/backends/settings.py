"""The settings the backends take, as plain dataclasses: the config sections hold them, the backends read them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VllmSettings:
    """The vLLM engine arguments proctor exposes (`teacher.vllm` / `reward.vllm` in the config); 0 / "" = vLLM's."""

    max_model_len: int = 0  # 0 = the model's
    # Below vLLM's own 0.9: the torch scorer and the critic usually share the GPU.
    gpu_memory_utilization: float = 0.6  # share of GPU memory vLLM takes; on CPU builds, of host memory
    kv_cache_memory_bytes: int = 0  # > 0 sizes the KV cache directly, instead of gpu_memory_utilization
    tensor_parallel_size: int = 1  # GPUs one replica's layers are split across
    pipeline_parallel_size: int = 1  # stages (nodes, with Ray) one replica's layers are split into
    data_parallel_size: int = 1  # engine replicas behind this server
    distributed_executor_backend: str = ""  # "" = vLLM's choice; mp (one node) or ray (multi-node)
    enable_prefix_caching: bool = True  # shared prompt prefixes (SKD templates, RRM prompts) computed once
    enforce_eager: bool = False  # True skips CUDA-graph capture: faster start, slower decode
    max_num_seqs: int = 0  # most sequences per engine step
    max_logprobs: int = 64  # most top log-probs one request may ask for
    load_format: str = "auto"  # "dummy" = random weights from config.json (benchmarks without weights)
    seed: int = 0  # the engine's seed; a request's own seed makes its samples reproducible
