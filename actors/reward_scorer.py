"""RewardScorer: scores (prompt, completion) pairs with reward functions, a learned reward
model and/or a reward model over HTTP, combined by their configured weights."""

from __future__ import annotations

import math
from typing import Any

import torch

from actors.batches import ScoredBatch
from rayalign.reward_functions import resolve, weighted_sum
from rayalign.rl_config import RewardsConfig


class RewardScorer:
    """Create with `ray.remote(RewardScorer)`; several can share a batch.

    Args:
        config: the RL config's `rewards` section. Reward functions are imported here, in
            the scorer's process (the driver has checked them before any actor started).
    """

    def __init__(self, config: RewardsConfig) -> None:
        self.functions = [resolve(name) for name in config.functions]
        self.weights = dict(config.functions)
        self.model = self.tokenizer = self.remote = None
        if config.reward_model is not None:
            from rayalign.models.reward import load_reward_model

            self.model, self.tokenizer = load_reward_model(config.reward_model)
            self.weights["reward_model"] = config.reward_model_weight
        if config.remote is not None:
            from rayalign.models.remote_reward import RemoteRewardModel

            r = config.remote
            self.remote = RemoteRewardModel.from_env(
                r.api_key_env,
                base_url=r.base_url,
                model=r.model,
                timeout_s=r.timeout_s,
                max_retries=r.max_retries,
                retry_budget_s=r.retry_budget_s,
                concurrency=r.concurrency,
            )
            self.weights["remote_reward"] = r.weight

    def score(
        self,
        prompts: list[list[dict]],
        completions: list[str],
        completion_ids: list[list[int]],
        columns: list[dict[str, Any]],
        conversational: bool = True,
    ) -> ScoredBatch:
        """Combined reward per completion [B] and each component [B] by name (NaN where a
        function had no opinion).

        Args:
            prompts: each completion's prompt as chat messages.
            completions: the completions' texts; `completion_ids` their token ids.
            columns: each completion's prompt row without its `prompt` (ground_truth...).
            conversational: whether the dataset's prompts were messages (then reward
                functions get messages, as TRL gives them) or plain strings.
        """
        parts: dict[str, list[float | None]] = {}
        if self.functions:
            as_prompts: list[Any] = prompts
            as_completions: list[Any] = completions
            if conversational:
                as_completions = [[{"role": "assistant", "content": c}] for c in completions]
            else:
                as_prompts = [p[-1]["content"] for p in prompts]
            names = sorted({k for row in columns for k in row})
            by_column = {k: [row.get(k) for row in columns] for k in names}
            for fn in self.functions:
                parts[fn.name] = fn(as_prompts, as_completions, completion_ids, by_column)
        if self.model is not None:
            from rayalign.models.reward import score

            answers = [[{"role": "assistant", "content": c}] for c in completions]
            parts["reward_model"] = score(self.model, self.tokenizer, prompts, answers).tolist()
        if self.remote is not None:
            parts["remote_reward"] = self.remote.score(prompts, completions)
        total = torch.tensor(weighted_sum(parts, self.weights), dtype=torch.float32)
        components = {
            k: torch.tensor([math.nan if x is None else x for x in v], dtype=torch.float32)
            for k, v in parts.items()
        }
        return ScoredBatch(rewards=total, components=components)
