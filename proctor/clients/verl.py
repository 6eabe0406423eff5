"""verl reward functions backed by a proctor RewardModel (tested: verl 0.9.1, and 0.6.1's batch manager).

verl ≥ 0.7 (its reward loop calls a reward function once per sample, thousands at once, on the reward loop
worker's event loop):

    reward.custom_reward_function.path=$(python -c 'import proctor.clients.verl as m; print(m.__file__)')
    reward.custom_reward_function.name=compute_score_async
    +reward.custom_reward_function.reward_kwargs.target=rm-host:50051
    +reward.custom_reward_function.reward_kwargs.run=my-experiment
    +reward.custom_reward_function.reward_kwargs.rollouts_per_step=4096   # data.train_batch_size x rollout.n
    +reward.custom_reward_function.reward_kwargs.total_steps=199          # T_MAX: total_training_steps - 1

The calls of one worker are coalesced into RewardBatched streams on one channel (`clients/coalesce.py`):
`compute_score_async` on the worker's loop, `compute_score` (for a blocking caller) on a background thread.
The reward manager in `clients/verl_manager.py` does the same and takes T, T_MAX and the run from verl itself.

verl ≤ 0.6: `custom_reward_function.name=compute_score_batch` with `reward_model.reward_manager=batch` (the whole
step on one stream).

The training step. verl passes none to a reward function: a sample's `extra_info["training_step"]` is used when
present (it always wins); otherwise the server counts the rollouts of `run` (`rollouts_per_step` a step, T = 0 on
the first step) — see engine/rewards/steps.py. A sample whose `extra_info["split"]` is a validation split (test,
val, validation: what verl's data scripts write) takes the run's T without being counted. T_MAX: `total_steps`
from `extra_info`, the options, `$PROCTOR_TOTAL_STEPS`, else the server's `reward.total_steps`. The options may
also come from the environment: `$PROCTOR_REWARD_TARGET`, `$PROCTOR_RUN`, `$PROCTOR_ROLLOUTS_PER_STEP`. A target of
several comma-separated replicas goes through the replica client (`clients/replicas.py`; give the replicas one
`reward.steps.state_dir` when T is counted).

Each call returns a dict whose `score` is the reward; verl logs the other keys (the same keys for every sample,
never NaN): `r_f1`, `alpha`, `atom_reward` (α·R_atom, the part of the reward from the atoms: 0 where none was
mixed in — rules mode, a malformed rollout), `format_ok`, `atom_count`, `training_step`. A rollout the server
could not score raises ItemFailed (verl then stops), never a made-up number.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from proctor.clients.coalesce import background_coalescer, coalescer_for_loop
from proctor.clients.reward import RewardClient, gold_list, reward_request
from proctor.clients.streaming import ItemFailed
from proctor.v1 import reward_pb2

VALIDATION_SPLITS = frozenset({"test", "val", "validation"})
DEFAULT_TARGET = "localhost:50051"
TIMEOUT_S = 600.0


def golds(ground_truth: Any) -> list[str]:
    """verl's ground truth: a string, a list, or Search-R1 / DeepResearcher's {"target": [...]}."""
    if isinstance(ground_truth, Mapping):
        ground_truth = ground_truth.get("target", ground_truth.get("answer"))
    if ground_truth is not None and not isinstance(ground_truth, str):
        ground_truth = list(ground_truth)  # numpy arrays (verl's parquet rows) as well as lists
    return gold_list(ground_truth)


def _option(options: Mapping[str, Any], name: str, env: str) -> Any:
    value = options.get(name)
    return value if value is not None else os.environ.get(env) or None


def target_of(options: Mapping[str, Any]) -> str:
    return str(_option(options, "target", "PROCTOR_REWARD_TARGET") or DEFAULT_TARGET)


def build_request(
    question: str,
    solution: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None,
    options: Mapping[str, Any],
    *,
    step: int | None = None,
    total_steps: int | None = None,
) -> reward_pb2.RewardRequest:
    """One sample's request. T: `step`, else extra_info's training_step, else counted on the server for the run."""
    extra = extra_info or {}
    if step is None and extra.get("training_step") is not None:
        step = int(extra["training_step"])
    run = _option(options, "run", "PROCTOR_RUN")
    if step is None and run is None:
        raise ValueError(
            "verl sends no training step: set reward_kwargs.run (and rollouts_per_step) so the server counts it, "
            "or put training_step into each sample's extra_info"
        )
    if total_steps is None:
        total = extra.get("total_steps", _option(options, "total_steps", "PROCTOR_TOTAL_STEPS"))
        total_steps = None if total is None else int(total)
    return reward_request(
        "",  # the coalescer names it
        question,
        solution,
        golds(ground_truth),
        step,
        total_steps=total_steps,
        run=None if step is not None else str(run),
        rollouts_per_step=int(_option(options, "rollouts_per_step", "PROCTOR_ROLLOUTS_PER_STEP") or 0),
        observe_only=extra.get("split") in VALIDATION_SPLITS,
        mode=options.get("mode"),
        atoms="none",  # verl takes the reward and its parts
    )


def score_dict(result: reward_pb2.RewardResult) -> dict[str, Any]:
    if result.HasField("error"):
        raise ItemFailed(result.id, result.error)
    mixed = result.format_ok and result.HasField("r_atom")
    return {
        "score": result.reward,
        "r_f1": result.r_f1,
        "alpha": result.alpha,
        "atom_reward": result.alpha * result.r_atom if mixed else 0.0,
        "format_ok": float(result.format_ok),
        "atom_count": result.atom_count,
        "training_step": result.training_step,
    }


def _question(extra_info: Mapping[str, Any] | None) -> str:
    return str((extra_info or {}).get("question", ""))


async def compute_score_async(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """verl ≥ 0.7's per-sample signature, awaited on the reward loop worker's event loop (no thread per call)."""
    request = build_request(_question(extra_info), solution_str, ground_truth, extra_info, options)
    coalescer = coalescer_for_loop(target_of(options), timeout_s=TIMEOUT_S)
    return score_dict(await coalescer.reward(request))


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The same for a blocking caller (verl's naive manager runs it in a thread pool): the calling thread waits on
    a future while a background loop coalesces every thread's calls into shared streams."""
    request = build_request(_question(extra_info), solution_str, ground_truth, extra_info, options)
    coalescer = background_coalescer(target_of(options), timeout_s=TIMEOUT_S)
    return score_dict(coalescer.reward(request))


_batch_clients: dict[str, RewardClient] = {}


def compute_score_batch(
    data_sources: Sequence[str],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Mapping[str, Any] | None],
    **options: Any,
) -> list[dict[str, Any]]:
    """verl ≤ 0.6's BatchRewardManager signature: every sample of the step on one stream."""
    requests = []
    for i, (solution, truth, extra) in enumerate(zip(solution_strs, ground_truths, extra_infos, strict=True)):
        request = build_request(_question(extra), solution, truth, extra, options)
        request.id = f"verl-{i}"
        requests.append(request)
    target = target_of(options)
    if target not in _batch_clients:
        _batch_clients[target] = RewardClient(target, timeout_s=TIMEOUT_S)
    results = _batch_clients[target].reward(requests)
    return [score_dict(results[request.id]) for request in requests]
