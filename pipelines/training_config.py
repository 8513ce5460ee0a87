"""Configuration of the offline stages (SFT, reward model, DPO, KTO): the optimisation
settings and the fields every stage's config shares. Each stage module subclasses
`StageConfig` with its own section (`sft`, `dpo`, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from rayalign.config import (
    DataConfig,
    LoraConfig,
    ModelConfig,
    ResourcesConfig,
    RunConfig,
    Strict,
)


class TrainingConfig(Strict):
    learning_rate: float = Field(1e-5, gt=0, description="Peak learning rate (AdamW).")
    global_batch_size: int = Field(
        32,
        ge=1,
        description="Sequences per optimizer step summed over all workers and accumulation.",
    )
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="Micro-batches per optimizer step."
    )
    max_steps: int | None = Field(
        100,
        ge=1,
        description="Optimizer steps to train; null trains trainer.num_train_epochs epochs instead.",
    )
    warmup_ratio: float = Field(
        0.05, ge=0, lt=1, description="Fraction of steps of linear warm-up."
    )
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule after warm-up."
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    logging_steps: int = Field(
        10, ge=1, description="Steps between logged metrics (progress, TensorBoard)."
    )
    save_steps: int = Field(
        50, ge=1, description="Steps between checkpoints reported to Ray Train."
    )
    keep_checkpoints: int = Field(
        2, ge=1, description="Step checkpoints kept in storage (the final one is kept too)."
    )
    max_failures: int = Field(
        2,
        ge=-1,
        description="Worker-group failures to recover from (from the latest checkpoint); -1 is unlimited.",
    )
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="Where the trainer logs: TensorBoard (under the run directory) and/or "
        "wandb or MLflow when installed (they read their usual WANDB_*/MLFLOW_* variables); "
        "[] logs nowhere.",
    )
    merge_with_start: float = Field(
        1.0,
        gt=0,
        le=1,
        description=(
            "WiSE-FT: the final checkpoint is this weight times the trained weights plus the "
            "rest times the starting model's (1.0 keeps the trained weights). Below 1 keeps "
            "more of what the start knew at the cost of some of what training added; step "
            "checkpoints stay unmerged, so a resumed run merges once, at its end."
        ),
    )


class StageConfig(Strict):
    """Fields every offline stage shares."""

    model: ModelConfig = Field(description="The model training starts from.")
    data: DataConfig = Field(description="Training and held-out data.")
    run: RunConfig = Field(description="Run name, storage and seed.")
    resources: ResourcesConfig = Field(
        default_factory=ResourcesConfig, description="Ray Train workers."
    )
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Optimisation.")
    register_as: str | None = Field(
        None, description="Registry name of the final checkpoint (default: the run name)."
    )
    lora: LoraConfig | None = Field(
        None,
        description="Train LoRA adapters instead of every weight (e.g. {r: 16}); the "
        "registered checkpoint has them merged. DPO and KTO then use the adapter-disabled "
        "model as the reference: no second model in memory.",
    )
    trainer: dict[str, Any] = Field(
        default_factory=dict,
        description="More arguments of the stage's TRL config class (SFTConfig, DPOConfig, "
        "KTOConfig, RewardConfig), e.g. {num_train_epochs: 2, gradient_checkpointing: false, "
        "optim: adafactor}; checked against the class before any worker starts. The keys "
        "rayalign sets itself are listed at the end of this page.",
    )

    @model_validator(mode="after")
    def _batch_divides(self) -> StageConfig:
        per_step = self.resources.num_workers * self.training.gradient_accumulation_steps
        if self.training.global_batch_size % per_step:
            raise ValueError(
                f"training.global_batch_size ({self.training.global_batch_size}) must be divisible by "
                f"resources.num_workers x training.gradient_accumulation_steps ({per_step})"
            )
        return self

    @property
    def per_device_batch_size(self) -> int:
        return self.training.global_batch_size // (
            self.resources.num_workers * self.training.gradient_accumulation_steps
        )

    @property
    def run_dir(self) -> Path | str:
        """The run's folder: a local Path, or a URI (`s3://...`) in object storage."""
        return self.run.run_dir
