"""Direct preference optimisation (DPO, IPO, hinge...) on Ray Train with TRL's DPOTrainer.

The reference is the frozen starting checkpoint (normally the SFT one) unless
`dpo.ref_model` names another.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from pipelines.config import Strict
from pipelines.datasets import load_rows, validate_rows
from pipelines.measure import measure_chat
from pipelines.training import Stage, StageConfig


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


class DPOStageConfig(StageConfig):
    dpo: DPOOptions = Field(default_factory=DPOOptions, description="DPO options.")


def validate_data(config: DPOStageConfig) -> None:
    for source in filter(None, [config.data.train, config.data.eval, config.data.preference_eval]):
        validate_rows(load_rows(source), "preference", source)


def build_trainer(config: DPOStageConfig, args: dict[str, Any]):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from pipelines.model_loading import load_causal_lm, load_tokenizer

    m = config.model
    tokenizer = load_tokenizer(
        m.name_or_path, revision=m.revision, trust_remote_code=m.trust_remote_code
    )
    model = load_causal_lm(
        m.name_or_path, dtype=m.dtype, revision=m.revision, trust_remote_code=m.trust_remote_code
    )
    model.train()
    ref = load_causal_lm(config.dpo.ref_model, dtype=m.dtype) if config.dpo.ref_model else None
    eval_args = (
        {"eval_strategy": "steps", "eval_steps": config.training.save_steps}
        if config.data.eval
        else {}
    )
    dpo_args = DPOConfig(
        **args,
        **eval_args,
        beta=config.dpo.beta,
        loss_type=[config.dpo.loss_type],
        label_smoothing=config.dpo.label_smoothing,
        max_length=config.data.max_length,
    )
    return DPOTrainer(
        model=model,
        ref_model=ref,
        args=dpo_args,
        train_dataset=Dataset.from_list(load_rows(config.data.train)),
        eval_dataset=Dataset.from_list(load_rows(config.data.eval)) if config.data.eval else None,
        processing_class=tokenizer,
    )


def measure(config: DPOStageConfig, checkpoint: str) -> dict[str, float]:
    return measure_chat(config.data, checkpoint)


def stage() -> Stage:
    return Stage("dpo", "chat", DPOStageConfig, validate_data, build_trainer, measure)


if __name__ == "__main__":
    from pipelines.training import stage_main

    raise SystemExit(stage_main("dpo"))
