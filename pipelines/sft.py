"""Supervised fine-tuning (instruction tuning) on Ray Train with TRL's SFTTrainer.

Data: conversational `messages` (loss on assistant turns only, by default),
prompt/completion rows (loss on the completion only, by default), or raw text in a
`text_field` for continued pretraining. Run as `rayalign train sft --config FILE`
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from pipelines.measure import measure_chat, text_loss
from pipelines.trainer_inputs import load_policy, peft_kwargs, trainer_datasets
from pipelines.training import Stage
from pipelines.training_config import StageConfig
from rayalign.config import EVAL_SPLIT, Strict
from rayalign.data.datasets import detect_sft_format, load_rows, validate_rows
from rayalign.data.sources import describe


class SFTOptions(Strict):
    completion_only: bool = Field(
        True,
        description="Train on assistant turns / completions only; false trains on every token.",
    )
    text_field: str = Field(
        "text", description="Field holding raw text rows (continued pretraining)."
    )
    packing: bool = Field(
        False, description="Pack several short rows into each max_length sequence."
    )


class SFTStageConfig(StageConfig):
    sft: SFTOptions = Field(default_factory=SFTOptions, description="SFT-specific options.")


def validate_data(config: SFTStageConfig) -> None:
    for source, split in config.data.splits():
        rows, where = load_rows(source, split), describe(source, split)
        try:
            fmt = detect_sft_format(rows[0], config.sft.text_field)
        except ValueError as err:
            raise type(err)(f"{where}, row 1: {err}") from None
        validate_rows(rows, fmt, where, config.sft.text_field)


OWNED = {
    "max_length": "data.max_length",
    "dataset_text_field": "sft.text_field",
    "packing": "sft.packing",
    "assistant_only_loss": "sft.completion_only",
    "completion_only_loss": "sft.completion_only",
}


def trl_args(config: SFTStageConfig) -> dict[str, Any]:
    """SFTConfig's arguments that the SFT section and the data's format set."""
    fmt = detect_sft_format(load_rows(config.data.train)[0], config.sft.text_field)
    return {
        "max_length": config.data.max_length,
        "dataset_text_field": config.sft.text_field,
        "packing": config.sft.packing,
        "assistant_only_loss": config.sft.completion_only and fmt == "language_modeling",
        "completion_only_loss": config.sft.completion_only if fmt == "prompt_completion" else None,
    }


def build_trainer(config: SFTStageConfig, args: dict[str, Any]):
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = load_policy(config)
    datasets = trainer_datasets(config)
    sft_args = SFTConfig(**args)
    return SFTTrainer(
        model=model,
        args=sft_args,
        processing_class=tokenizer,
        **datasets,
        **peft_kwargs(config),
    )


def measure(config: SFTStageConfig, checkpoint: str) -> dict[str, float]:
    """The chat measures, plus the held-out loss when the eval split is raw text."""
    metrics = measure_chat(config.data, checkpoint)
    if config.data.eval:
        first = load_rows(config.data.eval, EVAL_SPLIT)[0]
        if detect_sft_format(first, config.sft.text_field) == "text":
            metrics["heldout_text_loss"] = text_loss(
                checkpoint, config.data.eval, config.sft.text_field, config.data.max_length
            )
    return metrics


TRAINER = Stage(
    "sft",
    "chat",
    SFTStageConfig,
    validate_data,
    build_trainer,
    measure,
    trl_config="SFTConfig",
    trl_args=trl_args,
    owned=OWNED,
)
STAGE = TRAINER.definition()
