"""KTO (Kahneman-Tversky optimisation) on Ray Train with TRL's KTOTrainer.

Learns from unpaired examples labelled desirable or undesirable; the reference is
the frozen starting checkpoint.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from pipelines.measure import measure_chat
from pipelines.trainer_inputs import load_policy, peft_kwargs, trainer_datasets, validate_sources
from pipelines.training import Stage
from pipelines.training_config import StageConfig
from rayalign.config import Strict


class KTOOptions(Strict):
    beta: float = Field(
        0.1, gt=0, description="KL strength: higher keeps the policy closer to the reference."
    )
    desirable_weight: float = Field(
        1.0, gt=0, description="Loss weight of desirable (label true) examples."
    )
    undesirable_weight: float = Field(
        1.0, gt=0, description="Loss weight of undesirable (label false) examples."
    )


class KTOStageConfig(StageConfig):
    kto: KTOOptions = Field(default_factory=KTOOptions, description="KTO options.")


def validate_data(config: KTOStageConfig) -> None:
    validate_sources(config, "unpaired")


OWNED = {
    "beta": "kto.beta",
    "desirable_weight": "kto.desirable_weight",
    "undesirable_weight": "kto.undesirable_weight",
    "max_length": "data.max_length",
}


def trl_args(config: KTOStageConfig) -> dict[str, Any]:
    """KTOConfig's arguments that the KTO section sets."""
    return {
        "beta": config.kto.beta,
        "desirable_weight": config.kto.desirable_weight,
        "undesirable_weight": config.kto.undesirable_weight,
        "max_length": config.data.max_length,
    }


def build_trainer(config: KTOStageConfig, args: dict[str, Any]):
    from trl import KTOConfig, KTOTrainer

    model, tokenizer = load_policy(config)
    kto_args = KTOConfig(**args)
    return KTOTrainer(
        model=model,
        args=kto_args,
        processing_class=tokenizer,
        **trainer_datasets(config, "unpaired"),
        **peft_kwargs(config),  # with adapters: the adapter-disabled policy is the reference
    )


def measure(config: KTOStageConfig, checkpoint: str) -> dict[str, float]:
    return measure_chat(config.data, checkpoint)


TRAINER = Stage(
    "kto",
    "chat",
    KTOStageConfig,
    validate_data,
    build_trainer,
    measure,
    trl_config="KTOConfig",
    trl_args=trl_args,
    owned=OWNED,
)
STAGE = TRAINER.definition()
