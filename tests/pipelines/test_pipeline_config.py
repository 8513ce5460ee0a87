"""Pipeline configs: dependency order, clear errors for bad graphs, the jobs' commands."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from pipelines.pipeline import stage_entrypoint
from pipelines.pipeline_config import PipelineConfig, substitute
from rayalign.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


def _config(stages: list[dict]) -> PipelineConfig:
    return PipelineConfig.model_validate({"name": "p", "storage_path": "/runs", "stages": stages})


def _train(name: str, after: list[str], *overrides: str) -> dict:
    return {
        "name": name,
        "stage": "sft",
        "config": "configs/tiny/sft.yaml",
        "after": after,
        "overrides": list(overrides),
    }


def test_the_demo_pipeline_loads_in_dependency_order():
    config = load_config(PipelineConfig, ROOT / "configs" / "tiny" / "pipeline.yaml")
    order = [s.name for s in config.ordered()]
    assert order.index("sft") < order.index("rm") < order.index("ppo")
    for branch in ("dpo", "kto", "grpo"):
        assert order.index("sft") < order.index(branch)
    assert set(config.children("sft")) == {
        "rm",
        "dpo",
        "kto",
        "grpo",
        "ppo",
        "rlaif",
        "constitutional",
    }
    assert config.children("ppo") == []
    assert order.index("dpo") < order.index("rlaif")  # safety tuning after preference optimisation
    for spec in config.stages:  # every stage's config exists and loads with the overrides
        if spec.config:
            assert (ROOT / spec.config).is_file(), spec.config


def test_optional_stages_run_only_when_included():
    stages = [_train("a", []), {**_train("b", ["a"]), "optional": True}, _train("c", ["a"])]
    stages.append({**_train("d", ["b"]), "optional": True})
    config = _config(stages)
    assert [s.name for s in config.active().stages] == ["a", "c"]
    with_b = PipelineConfig.model_validate({**config.model_dump(), "include": ["b"]})
    assert [s.name for s in with_b.active().stages] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="'c' is not an optional stage"):
        PipelineConfig.model_validate({**config.model_dump(), "include": ["c"]})


def test_the_demo_pipeline_runs_the_safety_stages_when_included():
    config = load_config(PipelineConfig, ROOT / "configs" / "tiny" / "pipeline.yaml")
    optional = {s.name for s in config.stages if s.optional}
    assert optional == {"rlaif", "constitutional"}
    assert not optional & {s.name for s in config.active().stages}
    with_rlaif = load_config(
        PipelineConfig, ROOT / "configs" / "tiny" / "pipeline.yaml", ["include=[rlaif]"]
    )
    assert {s.name for s in with_rlaif.active().stages} & optional == {"rlaif"}


def test_a_required_stage_cannot_wait_for_an_optional_one():
    with pytest.raises(ValueError, match=r"'b' is not optional but waits for \['a'\]"):
        _config([{**_train("a", []), "optional": True}, _train("b", ["a"])])


def test_order_follows_after_not_the_file():
    config = _config([_train("b", ["a"]), {"name": "a", "rayalign": ["init-model", "--out", "x"]}])
    assert [s.name for s in config.ordered()] == ["a", "b"]


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([_train("a", ["b"]), _train("b", ["a"])], r"\['a', 'b'\] wait for each other"),
        ([_train("a", ["ghost"])], r"'a' refers to unknown stages \['ghost'\]"),
        (
            [_train("a", []), _train("b", [], "model.name_or_path=${a.path}")],
            "list them in 'after'",
        ),
        ([_train("a", []), _train("a", [])], r"repeated: \['a'\]"),
        ([{"name": "a", "stage": "sft"}], "needs a 'config'"),
        ([{"name": "a"}], "exactly one of 'stage' or 'rayalign'"),
    ],
)
def test_bad_graphs_are_rejected_with_the_stage_named(stages, message, tmp_path):
    path = tmp_path / "p.yaml"
    import yaml

    path.write_text(yaml.safe_dump({"name": "p", "storage_path": "/r", "stages": stages}))
    with pytest.raises(ConfigError, match=message):
        load_config(PipelineConfig, path)


def test_substitute_fills_known_references_and_names_unknown_ones():
    assert substitute("m=${sft.path}/x", {"sft.path": "/c"}) == "m=/c/x"
    with pytest.raises(KeyError, match=r"\$\{rm.path\} is not known yet"):
        substitute("r=${rm.path}", {"sft.path": "/c"})


def test_stage_commands_local_and_on_a_cluster():
    config = _config(
        [
            {"name": "base", "rayalign": ["init-model", "--out", "${storage}/base"]},
            _train("sft", ["base"], "model.name_or_path=${storage}/base"),
            {
                "name": "rl",
                "stage": "ppo",
                "config": "configs/tiny/grpo.yaml",
                "after": ["sft"],
                "overrides": ["model.name_or_path=${sft.path}"],
            },
        ]
    )
    base, sft, rl = config.ordered()
    values = {"storage": "/runs", "sft.path": "/runs/sft/final"}
    local = stage_entrypoint(base, values, "/runs", local=True)
    assert local.startswith(f"cd {ROOT} && ")
    assert shlex.split(local)[4:] == ["-m", "pipelines", "init-model", "--out", "/runs/base"]
    words = shlex.split(stage_entrypoint(sft, values, "/runs", local=False))
    assert words[:7] == [
        "python",
        "-m",
        "pipelines",
        "train",
        "sft",
        "--config",
        "configs/tiny/sft.yaml",
    ]
    assert words[7:] == [
        "model.name_or_path=/runs/base",
        "run.name=sft",
        "run.storage_path=/runs",
        "register_as=sft",
    ]
    words = shlex.split(stage_entrypoint(rl, values, "/runs", local=False))
    assert "model.name_or_path=/runs/sft/final" in words and "run.name=rl" in words
    assert not any(w.startswith("register_as") for w in words)
