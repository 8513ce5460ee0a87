"""What a TRL trainer of an offline stage is given: its config class's arguments
(rayalign's, the stage's own and the user's `trainer:` mapping, checked on the driver),
its datasets, its starting model and its LoRA adapters."""

from __future__ import annotations

import tempfile
from typing import Any, Protocol

from pipelines.training_config import StageConfig
from rayalign.config import EVAL_SPLIT, TRAIN_SPLIT, ConfigError
from rayalign.data.datasets import Format, load_validated
from rayalign.models.loading import load_causal_lm, load_tokenizer


class Recipe(Protocol):
    """What of a stage's recipe (`pipelines.training.Stage`) the arguments come from."""

    trl_config: str
    trl_args: Any  # (config) -> the stage's own arguments
    owned: dict[str, str]


# The TrainingArguments that rayalign sets for every stage, and the setting (or the reason)
# that owns each: a `trainer:` entry naming one of them is an error that says so.
OWNED: dict[str, str] = {
    "output_dir": "each worker writes to a temporary directory; Ray Train keeps the "
    "checkpoints under run.storage_path",
    "learning_rate": "training.learning_rate",
    "per_device_train_batch_size": "training.global_batch_size, split over "
    "resources.num_workers and training.gradient_accumulation_steps",
    "gradient_accumulation_steps": "training.gradient_accumulation_steps",
    "max_steps": "training.max_steps (null trains trainer.num_train_epochs)",
    "warmup_steps": "training.warmup_ratio",
    "lr_scheduler_type": "training.lr_scheduler",
    "weight_decay": "training.weight_decay",
    "max_grad_norm": "training.max_grad_norm",
    "logging_steps": "training.logging_steps",
    "save_strategy": "checkpoints go to Ray Train every training.save_steps",
    "save_steps": "training.save_steps",
    "save_total_limit": "training.keep_checkpoints (Ray Train keeps them)",
    "seed": "run.seed",
    "data_seed": "run.seed",
    "use_cpu": "resources.use_gpu",
    "bf16": "model.dtype",
    "fp16": "model.dtype",
    "report_to": "training.report_to",
    "eval_strategy": "the held-out loss is computed at every save when data.eval is set",
    "eval_steps": "the held-out loss is computed at every save when data.eval is set",
    "resume_from_checkpoint": "Ray Train resumes from the latest committed checkpoint",
}
# Defaults that a `trainer:` entry may change.
DEFAULT_ARGS: dict[str, Any] = {
    "disable_tqdm": True,  # progress lines instead of bars
    "dataloader_num_workers": 0,  # the worker's CPUs go to torch's threads
    "ddp_find_unused_parameters": False,
}


def trainer_args(config: StageConfig, output_dir: str) -> dict[str, Any]:
    """Keyword arguments shared by every TRL `*Config` (a `TrainingArguments` subclass)."""
    t = config.training
    by_epochs = t.max_steps is None
    return {
        **DEFAULT_ARGS,
        "output_dir": output_dir,
        "learning_rate": t.learning_rate,
        "per_device_train_batch_size": config.per_device_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "max_steps": -1 if by_epochs else t.max_steps,
        # A ratio when the step count is TRL's to work out; whole steps otherwise.
        "warmup_steps": t.warmup_ratio if by_epochs else int(t.warmup_ratio * t.max_steps),
        "lr_scheduler_type": t.lr_scheduler,
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "logging_steps": t.logging_steps,
        "save_strategy": "steps",
        "save_steps": t.save_steps,
        "save_total_limit": 1,
        "seed": config.run.seed,
        "data_seed": config.run.seed,
        "use_cpu": not config.resources.use_gpu,
        "bf16": config.model.dtype == "bfloat16",
        "fp16": config.model.dtype == "float16",
        "report_to": list(t.report_to) or ["none"],
        **({"eval_strategy": "steps", "eval_steps": t.save_steps} if config.data.eval else {}),
    }


def validate_sources(config: StageConfig, fmt: Format) -> None:
    """Validate the training and held-out sources as `fmt` rows and `preference_eval` as
    preference pairs, before any worker starts (errors name source, split, row, field)."""
    for source, split in config.data.splits():
        load_validated(source, fmt, split)
    if config.data.preference_eval:
        load_validated(config.data.preference_eval, "preference", EVAL_SPLIT)


def stage_args(stage: Recipe, config: StageConfig, output_dir: str) -> dict[str, Any]:
    """Every keyword argument of the stage's TRL config: rayalign's, the stage's own, then
    the user's `trainer:` mapping (checked by `check_trainer_args`)."""
    return {**trainer_args(config, output_dir), **stage.trl_args(config), **config.trainer}


def check_trainer_args(stage: Recipe, config: StageConfig) -> None:
    """Check `trainer:` and `training.report_to` on the driver, before any worker starts:
    each key must be a field of the stage's TRL config class that rayalign does not set
    itself, and the class must accept the whole set of arguments.

    Raises:
        ConfigError: naming the key, the class and what to do instead.
    """
    import importlib.util

    for name in config.training.report_to:
        if importlib.util.find_spec(name) is None:
            raise ConfigError(
                f"training.report_to: {name!r} is not installed here (pip install {name})"
            )
    if not config.trainer:
        return
    import dataclasses
    import difflib

    import trl

    cls = getattr(trl, stage.trl_config)
    names = {f.name for f in dataclasses.fields(cls)}
    owned = {**OWNED, **stage.owned}
    for key in config.trainer:
        if key in owned:
            raise ConfigError(
                f"trainer.{key}: rayalign sets {cls.__name__}.{key} itself; use {owned[key]}"
            )
        if key not in names:
            close = difflib.get_close_matches(key, sorted(names), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"trainer.{key}: {cls.__name__} has no field {key!r}{hint}")
    if "num_train_epochs" in config.trainer and config.training.max_steps is not None:
        raise ConfigError(
            "trainer.num_train_epochs: set training.max_steps=null too (TRL trains max_steps "
            "steps whenever it is set, whatever the epochs)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        try:
            cls(**stage_args(stage, config, tmp))
        except Exception as err:  # TrainingArguments raises ValueError, TypeError, ...
            raise ConfigError(f"trainer: {cls.__name__} rejects the arguments: {err}") from None


def peft_kwargs(config: StageConfig, task_type: str = "CAUSAL_LM") -> dict[str, Any]:
    """`peft_config` for a TRL trainer when the stage trains LoRA adapters."""
    return {"peft_config": config.lora.peft_config(task_type)} if config.lora else {}


def parameter_counts(model) -> dict[str, float]:
    """Trainable and total parameters of `model` (adapters only, with LoRA)."""
    params = list(model.parameters())
    return {
        "trainable_params": float(sum(p.numel() for p in params if p.requires_grad)),
        "total_params": float(sum(p.numel() for p in params)),
    }


def load_policy(config: StageConfig):
    """The starting causal LM (in train mode) and its tokenizer, as the config names them."""

    m = config.model
    tokenizer = load_tokenizer(
        m.name_or_path, revision=m.revision, trust_remote_code=m.trust_remote_code
    )
    model = load_causal_lm(
        m.name_or_path, dtype=m.dtype, revision=m.revision, trust_remote_code=m.trust_remote_code
    )
    return model.train(), tokenizer


# The columns a TRL trainer reads for each fixed-format stage; others are dropped (a hub
# dataset's ids and scores would otherwise reach the collator).
TRAINER_COLUMNS = {
    "preference": ["prompt", "chosen", "rejected"],
    "unpaired": ["prompt", "completion", "label"],
}


def trainer_datasets(config: StageConfig, fmt: str | None = None) -> dict[str, Any]:
    """`train_dataset` / `eval_dataset` keyword arguments for a TRL trainer: the sources'
    splits as `datasets.Dataset`s, preference rows with explicit prompts."""
    from rayalign.data.datasets import extract_prompt, load_rows
    from rayalign.data.sources import to_dataset

    def prepared(source, split):
        dataset = to_dataset(load_rows(source, split))
        if fmt == "preference":
            dataset = dataset.map(extract_prompt, desc="prompts from chosen/rejected")
        return dataset.select_columns(TRAINER_COLUMNS[fmt]) if fmt in TRAINER_COLUMNS else dataset

    evaluation = config.data.eval
    return {
        "train_dataset": prepared(config.data.train, TRAIN_SPLIT),
        "eval_dataset": prepared(evaluation, EVAL_SPLIT) if evaluation else None,
    }
