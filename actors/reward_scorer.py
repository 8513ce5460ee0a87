"""RewardScorer: scores (prompt, completion) pairs with a learned reward model and/or
verifiable reward functions, combined by configured weights."""

from __future__ import annotations

import torch

from actors.batches import ScoredBatch
from rayalign.rewards import REWARD_FUNCTIONS


class RewardScorer:
    """Create with `ray.remote(RewardScorer)`; several can share a batch.

    Args:
        reward_model: path of a reward-model checkpoint (the reward_model stage), or None.
        functions: verifiable reward functions by name (`rayalign.rewards.REWARD_FUNCTIONS`)
            with their weights, e.g. {"exact_match": 1.0}.
        reward_model_weight: weight of the learned reward in the sum.
    """

    def __init__(
        self,
        reward_model: str | None = None,
        functions: dict[str, float] | None = None,
        reward_model_weight: float = 1.0,
    ) -> None:
        functions = functions or {}
        unknown = set(functions) - set(REWARD_FUNCTIONS)
        if unknown:
            raise ValueError(
                f"unknown reward functions {sorted(unknown)}; known: {sorted(REWARD_FUNCTIONS)}"
            )
        if reward_model is None and not functions:
            raise ValueError("a RewardScorer needs a reward model, reward functions, or both")
        self.functions = functions
        self.reward_model_weight = reward_model_weight
        self.model = self.tokenizer = None
        if reward_model is not None:
            from rayalign.models.reward import load_reward_model

            self.model, self.tokenizer = load_reward_model(reward_model)

    def score(
        self, prompts: list[list[dict]], completions: list[str], ground_truths: list[str | None]
    ) -> ScoredBatch:
        """Combined reward per completion [B] and each component [B] by name."""
        parts: dict[str, torch.Tensor] = {}
        total = torch.zeros(len(completions))
        for name, weight in self.functions.items():
            if any(g is None for g in ground_truths):
                raise ValueError(f"reward function {name!r} needs a ground_truth for every prompt")
            parts[name] = torch.tensor(REWARD_FUNCTIONS[name](completions, ground_truths))
            total += weight * parts[name]
        if self.model is not None:
            from rayalign.models.reward import score

            answers = [[{"role": "assistant", "content": c}] for c in completions]
            parts["reward_model"] = score(self.model, self.tokenizer, prompts, answers)
            total += self.reward_model_weight * parts["reward_model"]
        return ScoredBatch(rewards=total, components=parts)
