"""TRL trainer arguments pass through `trainer:`, checked against the stage's TRL config
class on the driver; the keys rayalign sets itself are refused with the setting to use
(issue 16 item 3)."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest

from pipelines.trainer_inputs import OWNED, check_trainer_args, stage_args
from rayalign.config import ConfigError
from tests.conftest import stage_config

TRL_STAGES = ("sft", "dpo", "kto", "reward_model")


def _recipe(name: str):
    from importlib import import_module

    from pipelines.stage_registry import REGISTRY

    return import_module(REGISTRY[name].module).TRAINER


def _config(name: str, data: Path, *overrides: str):
    files = {
        "sft": "sft_train.jsonl",
        "dpo": "preference_train.jsonl",
        "kto": "unpaired_train.jsonl",
        "reward_model": "preference_train.jsonl",
    }
    return stage_config(name, [f"data.train={data / files[name]}", "data.eval=null", *overrides])[1]


@pytest.mark.parametrize("name", TRL_STAGES)
def test_owned_keys_are_real_fields_and_cover_what_rayalign_sets(name, arithmetic_data, tmp_path):
    import trl

    recipe = _recipe(name)
    fields = {f.name for f in dataclasses.fields(getattr(trl, recipe.trl_config))}
    owned = {**OWNED, **recipe.owned}
    assert set(owned) <= fields
    config = _config(name, arithmetic_data)
    args = stage_args(recipe, config, str(tmp_path))
    # Every argument rayalign passes is owned (refused in `trainer:`), a default the user
    # may change, or the config file's own `trainer:` entry.
    from pipelines.trainer_inputs import DEFAULT_ARGS

    assert set(args) <= set(owned) | set(DEFAULT_ARGS) | set(config.trainer)


@pytest.mark.parametrize(
    ("name", "trainer", "message"),
    [
        (
            "sft",
            "{gradient_checkpoint: true}",
            r"trainer.gradient_checkpoint: SFTConfig has no field 'gradient_checkpoint'; "
            r"did you mean gradient_checkpointing",
        ),
        ("dpo", "{beta: 0.5}", r"trainer.beta: rayalign sets DPOConfig.beta itself; use dpo.beta"),
        (
            "kto",
            "{learning_rate: 0.1}",
            r"trainer.learning_rate: .* KTOConfig.learning_rate itself; use training.learning_rate",
        ),
        ("reward_model", "{optim: no_such_optimizer}", r"RewardConfig rejects the arguments"),
        ("sft", "{num_train_epochs: 2}", r"set training.max_steps=null too"),
    ],
)
def test_bad_trainer_arguments_are_named(name, trainer, message, arithmetic_data):
    config = _config(name, arithmetic_data, f"trainer={trainer}")
    with pytest.raises(ConfigError, match=message):
        check_trainer_args(_recipe(name), config)


def test_epochs_instead_of_steps(arithmetic_data, tmp_path):
    recipe = _recipe("sft")
    config = _config(
        "sft", arithmetic_data, "training.max_steps=null", "trainer={num_train_epochs: 2}"
    )
    check_trainer_args(recipe, config)
    args = stage_args(recipe, config, str(tmp_path))
    assert args["max_steps"] == -1 and args["num_train_epochs"] == 2
    assert args["warmup_steps"] == config.training.warmup_ratio  # a ratio of TRL's count


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_report_to_a_logger_that_is_not_installed(arithmetic_data):
    config = _config("sft", arithmetic_data, "training.report_to=[tensorboard, wandb]")
    with pytest.raises(ConfigError, match=r"training.report_to: 'wandb' is not installed"):
        check_trainer_args(_recipe("sft"), config)
    assert stage_args(_recipe("sft"), config, "/tmp")["report_to"] == ["tensorboard", "wandb"]
    quiet = _config("sft", arithmetic_data, "training.report_to=[]")
    assert stage_args(_recipe("sft"), quiet, "/tmp")["report_to"] == ["none"]


@pytest.mark.slow
def test_trainer_arguments_reach_the_workers_trainer(ray_local, tiny_model, easy_data, runs_dir):
    """An SFT run for one epoch with gradient checkpointing and Adafactor: the arguments
    the worker's trainer ran with (saved beside the final weights) are the ones given."""
    import torch

    stage, config = stage_config(
        "sft",
        [
            f"model.name_or_path={tiny_model}",
            f"data.train={easy_data / 'sft_train.jsonl'}",
            "data.eval=null",
            "data.prompts_eval=null",
            "data.preference_eval=null",
            "run.name=sft-trainer-args",
            f"run.storage_path={runs_dir}",
            "training.max_steps=null",
            "training.global_batch_size=64",
            "training.save_steps=4",
            "trainer={num_train_epochs: 1, gradient_checkpointing: true, optim: adafactor}",
        ],
    )
    entry = stage.run(config)
    args = torch.load(Path(entry.path) / "training_args.bin", weights_only=False)
    assert args.gradient_checkpointing and args.optim == "adafactor"
    assert args.max_steps == -1 and args.num_train_epochs == 1
    assert entry.step == 6  # one epoch: ceil(350 rows / 64)
