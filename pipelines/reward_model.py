"""Reward-model training on Ray Train with TRL's RewardTrainer.

A sequence-classification head (one logit) on the starting model, trained with the
Bradley-Terry pairwise loss -log sigmoid(r(chosen) - r(rejected)) on preference
pairs. Its final checkpoint is what the PPO stage loads as a learned scorer.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from pipelines.config import Strict
from pipelines.datasets import load_rows, validate_rows
from pipelines.training import Stage, StageConfig, trainer_datasets


class RewardOptions(Strict):
    center_rewards_coefficient: float | None = Field(
        None, ge=0, description="Weight of a penalty pulling mean reward to 0 (None disables it)."
    )


class RewardModelStageConfig(StageConfig):
    reward: RewardOptions = Field(
        default_factory=RewardOptions, description="Reward-model options."
    )


def validate_data(config: RewardModelStageConfig) -> None:
    for source in filter(None, [config.data.train, config.data.eval]):
        validate_rows(load_rows(source), "preference", source)


def load_reward_model(path: str, dtype: torch.dtype = torch.float32):
    """A sequence-classification model with one output (the reward) and its pad token set."""
    from transformers import AutoModelForSequenceClassification

    from pipelines.model_loading import load_tokenizer

    tokenizer = load_tokenizer(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


@torch.no_grad()
def score(
    model, tokenizer, prompts: list[list[dict]], completions: list[list[dict]], batch_size: int = 32
) -> torch.Tensor:
    """Reward of each (prompt, completion) conversation. Returns [N] float32."""
    model.eval()
    texts = [
        tokenizer.apply_chat_template(p + c, tokenize=False)
        for p, c in zip(prompts, completions, strict=True)
    ]
    out = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(
            texts[start : start + batch_size],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
        out.append(model(**enc.to(model.device)).logits[:, 0].float().cpu())
    return torch.cat(out)


def build_trainer(config: RewardModelStageConfig, args: dict[str, Any]):
    from trl import RewardConfig, RewardTrainer

    torch.manual_seed(config.run.seed)  # the new score head's initialisation
    model, tokenizer = load_reward_model(config.model.name_or_path)
    tokenizer.padding_side = "right"
    reward_args = RewardConfig(
        **args,
        max_length=config.data.max_length,
        center_rewards_coefficient=config.reward.center_rewards_coefficient,
    )
    return RewardTrainer(
        model=model, args=reward_args, processing_class=tokenizer, **trainer_datasets(config)
    )


def pairwise_accuracy(checkpoint: str, preference_path: str) -> dict[str, float]:
    """Fraction of held-out pairs where r(chosen) > r(rejected), and the mean reward margin."""
    model, tokenizer = load_reward_model(checkpoint)
    rows = load_rows(preference_path)
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


def stage() -> Stage:
    return Stage(
        "reward_model", "reward", RewardModelStageConfig, validate_data, build_trainer, measure
    )


if __name__ == "__main__":
    from pipelines.training import stage_main

    raise SystemExit(stage_main("reward_model"))
