"""Direct preference optimisation (DPO, IPO, hinge...) on Ray Train with TRL's DPOTrainer.

The reference is the frozen starting checkpoint (normally the SFT one) unless
`dpo.ref_model` names another.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from pipelines.measure import measure_chat
from pipelines.trainer_inputs import load_policy, peft_kwargs, trainer_datasets, validate_sources
from pipelines.training import Stage
from pipelines.training_config import StageConfig
from rayalign.config import Strict


class DPOOptions(Strict):
    beta: float = Field(
        0.1, gt=0, description="KL strength: higher keeps the policy closer to the reference."
    )
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust", "bco_pair", "apo_zero"] = Field(
        "sigmoid", description="sigmoid = DPO, ipo = IPO, hinge = SLiC; see TRL's DPOConfig."
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="Assumed label noise (cDPO/robust)."
    )
    ref_model: str | None = Field(
        None, description="Reference model; default: the frozen starting model."
    )
    sft_weight: float = Field(
        0.0,
        ge=0,
        description=(
            "Weight of an added NLL loss on the chosen answers (RPO); > 0 keeps the policy "
            "producing the preferred answers while the preference loss pushes rejected ones down."
        ),
    )


class DPOStageConfig(StageConfig):
    dpo: DPOOptions = Field(default_factory=DPOOptions, description="DPO options.")


def validate_data(config: DPOStageConfig) -> None:
    validate_sources(config, "preference")


OWNED = {
    "beta": "dpo.beta",
    "loss_type": "dpo.loss_type (and dpo.sft_weight for an added NLL term)",
    "loss_weights": "dpo.sft_weight",
    "label_smoothing": "dpo.label_smoothing",
    "max_length": "data.max_length",
}


def trl_args(config: DPOStageConfig) -> dict[str, Any]:
    """DPOConfig's arguments that the DPO section sets."""
    dpo = config.dpo
    return {
        "beta": dpo.beta,
        "loss_type": [dpo.loss_type, "sft"] if dpo.sft_weight else [dpo.loss_type],
        "loss_weights": [1.0, dpo.sft_weight] if dpo.sft_weight else None,
        "label_smoothing": dpo.label_smoothing,
        "max_length": config.data.max_length,
    }


def build_trainer(config: DPOStageConfig, args: dict[str, Any]):
    from trl import DPOConfig, DPOTrainer

    from rayalign.models.loading import load_causal_lm

    model, tokenizer = load_policy(config)
    ref = (
        load_causal_lm(config.dpo.ref_model, dtype=config.model.dtype)
        if config.dpo.ref_model
        else None
    )
    dpo_args = DPOConfig(**args)
    return DPOTrainer(
        model=model,
        ref_model=ref,
        args=dpo_args,
        processing_class=tokenizer,
        **trainer_datasets(config, "preference"),
        **peft_kwargs(config),  # with adapters and no ref_model: the adapter-disabled policy
    )


def measure(config: DPOStageConfig, checkpoint: str) -> dict[str, float]:
    return measure_chat(config.data, checkpoint)


TRAINER = Stage(
    "dpo",
    "chat",
    DPOStageConfig,
    validate_data,
    build_trainer,
    measure,
    trl_config="DPOConfig",
    trl_args=trl_args,
    owned=OWNED,
)
STAGE = TRAINER.definition()
