"""Small typed records that cross actor boundaries in the RL stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class PromptRequest:
    """One prompt to sample for; `index` is its position in the step's batch.

    `seed`, when set, seeds this prompt's samples (its i-th sample draws from seed + i),
    whichever worker and batch it lands in; else `SamplingOptions.seed` applies.
    `columns` are the prompt row's other fields, for the reward functions.
    """

    index: int
    messages: list[dict]
    ground_truth: str | None = None
    seed: int | None = None
    columns: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sample:
    """One sampled completion.

    Attributes:
        index: the prompt's position in the step's batch.
        prompt_ids: prompt token ids after the chat template.
        completion_ids: sampled token ids (length T_i, ends with EOS unless truncated).
        logprobs: [T_i] log-probs of `completion_ids` under the sampling policy.
        text: decoded completion, special tokens removed.
        finish_reason: "stop" or "length".
        weight_version: version of the policy weights that sampled it.
        worker: which generation worker produced it.
    """

    index: int
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: str
    weight_version: int
    worker: str = ""


@dataclass
class SamplingOptions:
    """What `GenerationWorker.generate` samples with."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    seed: int | None = None


@dataclass
class ScoredBatch:
    """Rewards of B completions, as a RewardScorer returns them.

    Attributes:
        rewards: [B] the weighted sum of the components, one scalar per completion.
        components: each reward function's (and the reward model's) unweighted score [B],
            by name (`exact_match`, `reward_model`...).
    """

    rewards: torch.Tensor
    components: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class TrainBatch:
    """What the learner updates on. B sequences, T = longest completion; tensors right-padded.

    Attributes:
        prompt_ids / completion_ids: token lists per sequence.
        mask: [B, T] 1.0 on completion tokens.
        behaviour_logprobs: [B, T] log-probs under the policy that sampled (vLLM).
        advantages: [B, T] per-token advantages.
        ref_logprobs: [B, T] reference log-probs, for an in-loss KL term (else None).
        returns / old_values: [B, T] value targets and the critic's values at sampling (PPO).
        fresh: [B] bool, True where the sample came from the learner's current weights
            (None: every sample did). Only fresh samples measure the vLLM/learner gap.
    """

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    mask: torch.Tensor
    behaviour_logprobs: torch.Tensor
    advantages: torch.Tensor
    ref_logprobs: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    old_values: torch.Tensor | None = None
    fresh: torch.Tensor | None = None

    def fresh_rows(self) -> torch.Tensor:
        """[B] float, 1.0 on samples drawn with the learner's current weights."""
        if self.fresh is None:
            return torch.ones(len(self.prompt_ids))
        return self.fresh.float()

    def select(self, idx: list[int]) -> TrainBatch:
        """The sub-batch of rows `idx` (minibatches and data-parallel shards)."""

        def rows(t):
            return None if t is None else t[idx]

        return TrainBatch(
            prompt_ids=[self.prompt_ids[i] for i in idx],
            completion_ids=[self.completion_ids[i] for i in idx],
            mask=self.mask[idx],
            behaviour_logprobs=self.behaviour_logprobs[idx],
            advantages=self.advantages[idx],
            ref_logprobs=rows(self.ref_logprobs),
            returns=rows(self.returns),
            old_values=rows(self.old_values),
            fresh=rows(self.fresh),
        )
