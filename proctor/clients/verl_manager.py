"""A verl reward manager backed by a proctor RewardModel (verl ≥ 0.7's reward loop; tested: verl 0.9.1).

    reward.reward_manager.source=importlib
    reward.reward_manager.name=ProctorRewardManager
    reward.reward_manager.module.path=$(python -c 'import proctor.clients.verl_manager as m; print(m.__file__)')
    +reward.reward_kwargs.target=rm-host:50051           # or $PROCTOR_REWARD_TARGET

(Importing this module also registers it in verl's registry as "proctor", for code that imports it first.)

verl's RewardLoopWorker hands a manager one sample at a time (`run_single`), all the samples of its share of the
batch at once; this manager coalesces them on the worker's loop into RewardBatched streams over one channel, so
a batch goes out as one stream (a few, if it trickles in over more than the 5 ms window). What it takes from verl
itself, so that nothing but the lines above needs configuring:

- the question: the last user message of the sample's `raw_prompt` (else `extra_info["question"]`);
- the response: decoded from the sample's `responses` as verl's naive manager does;
- T: `meta_info["global_steps"] - 1` where the data carries it (T = completed steps, 0 on the first step); else
  `extra_info["training_step"]`; else counted on the server for the run `project_name/experiment_name` at
  `data.train_batch_size × rollout.n` rollouts a step (engine/rewards/steps.py). verl 0.9.1's PPO trainer sets
  `global_steps` on the generation batch only: neither its streaming (agent loop) nor its colocated
  (`compute_rm_score`) reward path passes it on, so there the count is what gives T;
- T_MAX: `total_training_steps - 1` (the last step's T, so α reaches 0 on it), from the trainer's config.

`reward_kwargs` (run, rollouts_per_step, total_steps, target, mode) override what is read from verl.
Validation samples (`extra_info["split"]` test / val / validation) take the run's T without being counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from verl.experimental.reward_loop.reward_manager import register  # type: ignore[import-not-found]
from verl.experimental.reward_loop.reward_manager.base import (  # type: ignore[import-not-found]
    RewardManagerBase,
)
from verl.experimental.reward_loop.reward_manager.registry import (  # type: ignore[import-not-found]
    REWARD_MANAGER,
)

from proctor.clients.coalesce import coalescer_for_loop
from proctor.clients.verl import TIMEOUT_S, build_request, score_dict, target_of


def _get(config: Any, path: str) -> Any:
    node = config
    for name in path.split("."):
        node = node.get(name) if node is not None and hasattr(node, "get") else None
    return node


def _question(non_tensor: Mapping[str, Any], extra_info: Mapping[str, Any]) -> str:
    chat = non_tensor.get("raw_prompt")
    if chat is not None:
        users = [m.get("content", "") for m in list(chat) if isinstance(m, Mapping) and m.get("role") == "user"]
        if users:
            content = users[-1]
            if isinstance(content, list):  # multi-part content: its text parts
                content = "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
            return str(content)
    return str(extra_info.get("question", ""))


class ProctorRewardManager(RewardManagerBase):  # type: ignore[misc]
    def __init__(
        self,
        config: Any,
        tokenizer: Any,
        compute_score: Any = None,
        reward_router_address: str | None = None,
        reward_model_tokenizer: Any = None,
        **reward_kwargs: Any,
    ) -> None:
        super().__init__(config, tokenizer, compute_score)
        options = dict(_get(config, "reward.reward_kwargs") or {})
        options.update(reward_kwargs)
        trainer = _get(config, "trainer") or {}
        if options.get("run") is None and trainer.get("experiment_name"):
            options["run"] = f"{trainer.get('project_name')}/{trainer.get('experiment_name')}"
        if options.get("rollouts_per_step") is None:
            batch, n = _get(config, "data.train_batch_size"), _get(config, "actor_rollout_ref.rollout.n")
            if batch and n:
                options["rollouts_per_step"] = int(batch) * int(n)
        total = options.get("total_steps")
        if total is None:
            total = _get(config, "trainer.total_training_steps") or _get(
                config, "actor_rollout_ref.actor.optim.total_training_steps"
            )
            total = None if total is None else max(int(total) - 1, 1)
        self.total_steps: int | None = None if total is None else int(total)
        self.options = options

    async def run_single(self, data: Any) -> dict[str, Any]:
        item = data[-1:][0]  # multi-sequence outputs: the reward is the last sequence's, as in verl's managers
        response_ids = item.batch["responses"]
        valid = int(item.batch["attention_mask"][-response_ids.shape[-1] :].sum())
        response = await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.tokenizer.decode(response_ids[:valid], skip_special_tokens=True)
        )
        non_tensor = item.non_tensor_batch
        extra = dict(non_tensor.get("extra_info") or {})
        global_steps = (getattr(data, "meta_info", None) or {}).get("global_steps")
        step = int(global_steps) - 1 if global_steps is not None and int(global_steps) > 0 else None
        request = build_request(
            _question(non_tensor, extra),
            response,
            non_tensor["reward_model"]["ground_truth"],
            extra,
            self.options,
            step=step,
            total_steps=self.total_steps,
        )
        coalescer = coalescer_for_loop(target_of(self.options), timeout_s=TIMEOUT_S)
        scores = score_dict(await coalescer.reward(request))
        return {"reward_score": scores["score"], "reward_extra_info": scores}


# verl's `source=importlib` runs this file again under another module name; the first class registered keeps the
# name (the registry refuses a second class for it).
if "proctor" not in REWARD_MANAGER:
    register("proctor")(ProctorRewardManager)
