"""The stage registry is the one list the CLI, the job entrypoint, the pipeline config and
the config reference read."""

from __future__ import annotations

import pytest

from pipelines.stage_registry import REGISTRY, STAGE_NAMES, load_stage
from rayalign.config import ConfigError, load_config


def test_every_registered_stage_loads_under_its_name():
    for name in STAGE_NAMES:
        stage = load_stage(name)
        assert stage.name == name
        assert "run" in stage.config_cls.model_fields  # every stage config has a run section
        assert callable(stage.run)


def test_unknown_stage_names_the_registered_ones():
    with pytest.raises(ValueError, match="registered stages: sft, reward_model"):
        load_stage("sftt")


def test_cli_and_pipeline_config_accept_exactly_the_registered_stages(tmp_path):
    from pipelines.cli import build_parser
    from pipelines.pipeline_config import PipelineConfig

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    stage_arg = next(a for a in train._actions if a.dest == "stage")
    assert tuple(stage_arg.choices) == STAGE_NAMES

    bad = tmp_path / "p.yaml"
    bad.write_text("name: p\nstages:\n  - {name: a, stage: nope, config: c.yaml}\n")
    with pytest.raises(ConfigError, match=r"stages\.0\.stage"):
        load_config(PipelineConfig, bad)


def test_config_reference_covers_every_registered_stage():
    from pipelines.config_reference import render

    text = render()
    for name, entry in REGISTRY.items():
        assert f"## {name}\n" in text and entry.summary in text


def test_ray_train_carries_a_registered_stage_by_name_and_another_by_value():
    """The train loop's config crosses to Ray Train's controller, which unpickles it: a
    registered stage goes by name (the controller then imports no trainer module), one the
    registry does not hold goes as the object; the worker gets the same `Stage` back."""
    import dataclasses
    import pickle

    from pipelines.sft import TRAINER
    from pipelines.training import _portable_stage, _resolve_stage

    carried = _portable_stage(TRAINER)
    assert carried == "sft" and _resolve_stage(pickle.loads(pickle.dumps(carried))) is TRAINER
    custom = dataclasses.replace(TRAINER, owned={})  # same name, not the registry's object
    assert _portable_stage(custom) is custom and _resolve_stage(custom) is custom
