"""The sizes of a gpu-check run: the real shapes on a GPU, tiny ones for the CPU rehearsal (same code, same phases)."""

from __future__ import annotations

from dataclasses import dataclass, field

# Qwen2.5-1.5B's shape (the teacher of the bars) and RoBERTa-large's (the critic of the bars).
QWEN_1_5B = {"hidden_size": 1536, "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
             "intermediate_size": 8960, "vocab_size": 151936, "max_position_embeddings": 32768}  # fmt: skip
ROBERTA_LARGE = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096,
                 "vocab_size": 50265, "max_position_embeddings": 512}  # fmt: skip
TINY_TEACHER = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
                "intermediate_size": 128, "vocab_size": 512, "max_position_embeddings": 4096}  # fmt: skip
TINY_CRITIC = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
               "vocab_size": 4096, "max_position_embeddings": 512}  # fmt: skip


@dataclass(frozen=True)
class Scale:
    rehearse: bool
    device: str  # where the models run
    dtype: str  # the bars' serving dtype (the correctness checks serve float32: see serving.py)
    teacher: dict[str, int] = field(repr=False)
    critic: dict[str, int] = field(repr=False)
    copy_mib: int  # the copy-bandwidth buffer
    gemm_n: int  # the n x n x n product of the matrix-rate ceiling
    score_len: int  # tokens per sequence of the Score bars (the issue: 1,024)
    score_context: int  # of which context; the rest is the target the log-probs are asked for
    score_seqs: int  # sequences in the Score bar (16 per batch: 16 x 1,024 = one max_score_tokens batch)
    top20_seqs: int  # sequences in the Score top-20 bar
    grpo_prompts: int  # the GRPO bar: prompts x n continuations, context + continuation tokens
    grpo_n: int
    grpo_context: int
    grpo_cont: int
    critic_triples: int  # SKD triples in the critic bar (5 name draws, so 5 pairs each)
    # The packed phase's attention: flex_attention on a GPU; on the CPU its compile alone takes minutes (inductor's
    # C++), so the rehearsal packs rows on sdpa (a block-diagonal mask): the same phase, a different kernel.
    packed_attention: str = "flex_attention"
    max_score_tokens: int = 16384
    concurrency: int = 4  # client streams of the closed-loop bars


GPU = Scale(
    rehearse=False, device="cuda", dtype="bfloat16", teacher=QWEN_1_5B, critic=ROBERTA_LARGE,
    copy_mib=2048, gemm_n=8192, score_len=1024, score_context=256, score_seqs=512, top20_seqs=256,
    grpo_prompts=64, grpo_n=16, grpo_context=1024, grpo_cont=512, critic_triples=8192,
)  # fmt: skip
REHEARSAL = Scale(
    rehearse=True, device="cpu", dtype="float32", teacher=TINY_TEACHER, critic=TINY_CRITIC,
    copy_mib=64, gemm_n=512, score_len=64, score_context=16, score_seqs=32, top20_seqs=32,
    grpo_prompts=4, grpo_n=4, grpo_context=48, grpo_cont=16, critic_triples=256, packed_attention="sdpa",
    max_score_tokens=1024,
)  # fmt: skip


def scale(rehearse: bool) -> Scale:
    return REHEARSAL if rehearse else GPU
