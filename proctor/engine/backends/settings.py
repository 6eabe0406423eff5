"""The settings the backends take, as plain dataclasses: the config sections hold them, the backends read them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class VllmSettings:
    """The vLLM engine arguments proctor exposes (`teacher.vllm` / `reward.vllm` in the config); 0 / "" = vLLM's."""

    max_model_len: int = 0
    """0 = the model's"""
    gpu_memory_utilization: float = 0.6
    """share of GPU memory vLLM takes; on CPU builds, of host memory. Below vLLM's own 0.9: the torch scorer and the
    critic usually share the GPU"""
    kv_cache_memory_bytes: int = 0
    """> 0 sizes the KV cache directly, instead of gpu_memory_utilization"""
    tensor_parallel_size: int = 1
    """GPUs one replica's layers are split across"""
    pipeline_parallel_size: int = 1
    """stages (nodes, with Ray) one replica's layers are split into"""
    data_parallel_size: int = 1
    """engine replicas behind this server"""
    distributed_executor_backend: str = ""
    """ "" = vLLM's choice; mp (one node) or ray (multi-node)"""
    enable_prefix_caching: bool = True
    """shared prompt prefixes (SKD templates, RRM prompts) computed once"""
    enforce_eager: bool = False
    """True skips CUDA-graph capture: faster start, slower decode"""
    max_num_seqs: int = 0
    """most sequences per engine step"""
    max_logprobs: int = 256
    """most top log-probs one request may ask for"""
    load_format: str = "auto"
    """ "dummy" = random weights from config.json (benchmarks without weights)"""
    seed: int = 0
    """the engine's seed; a request's own seed makes its samples reproducible"""


BACKENDS = ("auto", "torch", "vllm")
# What answers Score, groups and probes: torch = the fused-kernel torch scorer on one device; vllm = vLLM's prompt
# log-probs; vllm-hidden = vLLM runs the model, sharded as its `vllm:` settings say, and hands back final hidden
# states that proctor's fused lm_head turns into log-probs (a second vLLM engine beside the generating one).
SCORERS = ("torch", "vllm", "vllm-hidden")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")
SCORE_PACKINGS = ("auto", "packed", "padded")
# The pooling engine of vllm-hidden: prefill only, so a small KV cache beside the generating engine's 0.6.
SCORER_VLLM = VllmSettings(gpu_memory_utilization=0.25)


@dataclass
class BackendSettings:
    """How a section's causal LM is served: the `teacher` and `reward` sections each hold these fields."""

    model: str = "builtin:smollm2"
    """HF id, local folder, builtin:smollm2 or builtin:tiny"""
    backend: str = "auto"
    """generation: vllm (continuous batching), torch (own batching); auto = vllm if on CUDA"""
    scorer: str = "torch"
    """torch | vllm | vllm-hidden: what answers Score (log-probs of given text). Score with backend vllm: torch = the
    fused-kernel scorer, a second copy of the weights beside vLLM's, on one device; vllm = vLLM's prompt log-probs,
    no second copy but a full prefill per sequence and slow with top-k; vllm-hidden = a second vLLM engine, sharded
    like the first, whose final hidden states go through the fused lm_head (the scorer for a teacher larger than one
    GPU)"""
    device: str = "auto"
    """auto = cuda if available, else cpu (the torch backend and scorer; vllm-hidden's lm_head)"""
    dtype: str = "auto"
    """torch: auto = bfloat16 on cuda, float32 on cpu; vllm: auto = the model's"""
    attn_implementation: str = "sdpa"
    """The torch backend's attention (transformers' attn_implementation); flash_attention_2/3 need flash-attn"""
    score_packing: str = "auto"
    """Score batches: packed = one row, no padding (varlen attention); padded = similar lengths side by side; auto =
    packed with a varlen attention (flash_attention_2/3, flex_attention), padded with sdpa / eager (a packed row
    there attends over a dense mask of the whole row)"""
    vllm: VllmSettings = field(default_factory=VllmSettings)
    """with backend: vllm"""
    scorer_vllm: VllmSettings = field(default_factory=lambda: SCORER_VLLM)
    """With scorer: vllm-hidden, its own vLLM engine (the pooling runner): a second copy of the weights, sharded as
    these settings say, beside the generating engine's (their memory shares must fit the GPUs together)"""
    max_batch_seqs: int = 64
    """torch backend: most sequences in one generation wave"""
    max_score_tokens: int = 16384
    """torch backend: token slots of one Score batch (probes and groups included)"""
