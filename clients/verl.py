"""verl reward functions backed by a proctor RewardModel.

verl loads a custom reward function from a file path and a name:

    custom_reward_function.path=$(python -c 'import proctor.clients.verl as m; print(m.__file__)')
    custom_reward_function.name=compute_score_batch       # with reward_model.reward_manager=batch
    # or name=compute_score with the default (naive) manager, which calls it once per sample

The server is `$PROCTOR_REWARD_TARGET` (default localhost:50051). verl does not pass the training step to a reward
function: put `training_step` / `total_steps` (and `question`, which the RRM reads) into each sample's
`extra_info`, or set `$PROCTOR_TOTAL_STEPS`. Each call returns a dict whose `score` is the reward; the components
(`r_f1`, `r_atom`, `alpha`, `format_ok`) are logged by verl as extra metrics.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from proctor.clients.reward import RewardClient, gold_list, reward_request
from proctor.clients.streaming import ItemFailed

_client: RewardClient | None = None


def _reward_client() -> RewardClient:
    global _client
    if _client is None:
        _client = RewardClient(os.environ.get("PROCTOR_REWARD_TARGET", "localhost:50051"), timeout_s=600)
    return _client


def _golds(ground_truth: Any) -> list[str]:
    if isinstance(ground_truth, dict):  # Search-R1 / DeepResearcher data: {"target": [...]}
        ground_truth = ground_truth.get("target", ground_truth.get("answer"))
    return gold_list(ground_truth)


def compute_score_batch(
    data_sources: Sequence[str],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[dict[str, Any] | None],
) -> list[dict[str, Any]]:
    """verl's BatchRewardManager signature: every sample of the step on one stream."""
    env_total = os.environ.get("PROCTOR_TOTAL_STEPS")
    requests = []
    for i, (solution, truth, extra) in enumerate(zip(solution_strs, ground_truths, extra_infos, strict=True)):
        extra = extra or {}
        total = extra.get("total_steps", int(env_total) if env_total else None)
        requests.append(
            reward_request(
                f"verl-{i}",
                str(extra.get("question", "")),
                solution,
                _golds(truth),
                int(extra.get("training_step", 0)),
                total_steps=None if total is None else int(total),
                atoms="none",  # verl takes the reward and its parts
            )
        )
    results = _reward_client().reward(requests)
    scores = []
    for request in requests:
        result = results[request.id]
        if result.HasField("error"):
            raise ItemFailed(request.id, result.error)
        scores.append(
            {
                "score": result.reward,
                "r_f1": result.r_f1,
                "r_atom": result.r_atom if result.HasField("r_atom") else float("nan"),
                "alpha": result.alpha,
                "format_ok": float(result.format_ok),
            }
        )
    return scores


def compute_score(
    data_source: str, solution_str: str, ground_truth: Any, extra_info: dict[str, Any] | None = None
) -> dict[str, Any]:
    """verl's per-sample signature (NaiveRewardManager). Prefer compute_score_batch: one call per step."""
    return compute_score_batch([data_source], [solution_str], [ground_truth], [extra_info])[0]
