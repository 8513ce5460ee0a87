"""Reward-model training on Ray Train with TRL's RewardTrainer.

A sequence-classification head (one logit) on the starting model, trained with the
Bradley-Terry pairwise loss -log sigmoid(r(chosen) - r(rejected)) on preference
pairs. Its final checkpoint is what the PPO stage loads as a learned scorer.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from pipelines.trainer_inputs import peft_kwargs, trainer_datasets, validate_sources
from pipelines.training import Stage
from pipelines.training_config import StageConfig
from rayalign.config import EVAL_SPLIT, Source, Strict
from rayalign.data.datasets import load_preference_rows
from rayalign.models.reward import load_reward_model, score


class RewardOptions(Strict):
    center_rewards_coefficient: float | None = Field(
        None, ge=0, description="Weight of a penalty pulling mean reward to 0 (None disables it)."
    )


class RewardModelStageConfig(StageConfig):
    reward: RewardOptions = Field(
        default_factory=RewardOptions, description="Reward-model options."
    )


def validate_data(config: RewardModelStageConfig) -> None:
    validate_sources(config, "preference")


OWNED = {
    "max_length": "data.max_length",
    "center_rewards_coefficient": "reward.center_rewards_coefficient",
}


def trl_args(config: RewardModelStageConfig) -> dict[str, Any]:
    """RewardConfig's arguments that the reward section sets."""
    return {
        "max_length": config.data.max_length,
        "center_rewards_coefficient": config.reward.center_rewards_coefficient,
    }


def build_trainer(config: RewardModelStageConfig, args: dict[str, Any]):
    from trl import RewardConfig, RewardTrainer

    torch.manual_seed(config.run.seed)  # the new score head's initialisation
    model, tokenizer = load_reward_model(config.model.name_or_path)
    tokenizer.padding_side = "right"
    reward_args = RewardConfig(**args)
    return RewardTrainer(
        model=model,
        args=reward_args,
        processing_class=tokenizer,
        **trainer_datasets(config, "preference"),
        **peft_kwargs(config, "SEQ_CLS"),  # peft trains the new score head whole
    )


def pairwise_accuracy(checkpoint: str, preference_data: Source) -> dict[str, float]:
    """Fraction of held-out pairs where r(chosen) > r(rejected), and the mean reward margin."""
    model, tokenizer = load_reward_model(checkpoint)
    rows = load_preference_rows(preference_data, EVAL_SPLIT)
    prompts = [r["prompt"] for r in rows]
    chosen = score(model, tokenizer, prompts, [r["chosen"] for r in rows])
    rejected = score(model, tokenizer, prompts, [r["rejected"] for r in rows])
    return {
        "heldout_pairwise_accuracy": (chosen > rejected).float().mean().item(),
        "heldout_reward_margin": (chosen - rejected).mean().item(),
    }


def measure(config: RewardModelStageConfig, checkpoint: str) -> dict[str, float]:
    source = config.data.preference_eval or config.data.eval
    return pairwise_accuracy(checkpoint, source) if source else {}


TRAINER = Stage(
    "reward_model",
    "reward",
    RewardModelStageConfig,
    validate_data,
    build_trainer,
    measure,
    trl_config="RewardConfig",
    trl_args=trl_args,
    owned=OWNED,
)
STAGE = TRAINER.definition()
