"""Supervised fine-tuning (instruction tuning) on Ray Train with TRL's SFTTrainer.

Data: conversational `messages` (loss on assistant turns only, by default),
prompt/completion rows (loss on the completion only, by default), or raw text in a
`text_field` for continued pretraining. Run as `rayalign train sft --config FILE`
or `python -m pipelines.sft --config FILE` (a Ray job entrypoint).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from pipelines.config import Strict
from pipelines.datasets import detect_sft_format, load_rows, validate_rows
from pipelines.measure import measure_chat
from pipelines.training import Stage, StageConfig


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
    for source in filter(None, [config.data.train, config.data.eval]):
        rows = load_rows(source)
        try:
            fmt = detect_sft_format(rows[0], config.sft.text_field)
        except ValueError as err:
            raise type(err)(f"{source}, row 1: {err}") from None
        validate_rows(rows, fmt, source, config.sft.text_field)


def _dataset(source: str):
    from datasets import Dataset

    return Dataset.from_list(load_rows(source))


def build_trainer(config: SFTStageConfig, args: dict[str, Any]):
    from trl import SFTConfig, SFTTrainer

    from pipelines.model_loading import load_causal_lm, load_tokenizer

    m = config.model
    tokenizer = load_tokenizer(
        m.name_or_path, revision=m.revision, trust_remote_code=m.trust_remote_code
    )
    model = load_causal_lm(
        m.name_or_path, dtype=m.dtype, revision=m.revision, trust_remote_code=m.trust_remote_code
    )
    model.train()
    train = _dataset(config.data.train)
    fmt = detect_sft_format(train[0], config.sft.text_field)
    eval_args = {}
    if config.data.eval:
        eval_args = {"eval_strategy": "steps", "eval_steps": config.training.save_steps}
    sft_args = SFTConfig(
        **args,
        **eval_args,
        max_length=config.data.max_length,
        dataset_text_field=config.sft.text_field,
        packing=config.sft.packing,
        assistant_only_loss=config.sft.completion_only and fmt == "language_modeling",
        completion_only_loss=config.sft.completion_only if fmt == "prompt_completion" else None,
    )
    return SFTTrainer(
        model=model,
        args=sft_args,
        train_dataset=train,
        eval_dataset=_dataset(config.data.eval) if config.data.eval else None,
        processing_class=tokenizer,
    )


def measure(config: SFTStageConfig, checkpoint: str) -> dict[str, float]:
    return measure_chat(config.data, checkpoint)


def stage() -> Stage:
    return Stage("sft", "chat", SFTStageConfig, validate_data, build_trainer, measure)


if __name__ == "__main__":
    from pipelines.training import stage_main

    raise SystemExit(stage_main("sft"))
