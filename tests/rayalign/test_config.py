import pytest

from rayalign.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    ResourcesConfig,
    RunConfig,
    Strict,
    load_config,
    parse_override,
)


class ExampleStage(Strict):
    model: ModelConfig
    data: DataConfig
    run: RunConfig
    resources: ResourcesConfig = ResourcesConfig()


GOOD = """
model:
  name_or_path: /tmp/m
data:
  train: /tmp/d/sft_train.jsonl
run:
  name: demo-1
"""


def _write(tmp_path, text):
    path = tmp_path / "stage.yaml"
    path.write_text(text)
    return path


def test_loads_and_applies_typed_overrides(tmp_path):
    cfg = load_config(
        ExampleStage,
        _write(tmp_path, GOOD),
        ["resources.num_workers=2", "model.dtype=bfloat16", "run.seed=7"],
    )
    assert cfg.resources.num_workers == 2 and cfg.model.dtype == "bfloat16" and cfg.run.seed == 7
    assert cfg.run.storage_path == "runs"


def test_unknown_key_names_field_and_file(tmp_path):
    path = _write(tmp_path, GOOD + "  lerning_rate: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(ExampleStage, path)
    assert "run.lerning_rate" in str(err.value) and str(path) in str(err.value)


def test_wrong_type_from_override_names_the_override(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(ExampleStage, _write(tmp_path, GOOD), ["resources.num_workers=two"])
    msg = str(err.value)
    assert "resources.num_workers" in msg and "override 'resources.num_workers=two'" in msg


def test_missing_required_field(tmp_path):
    with pytest.raises(ConfigError, match=r"data.train: Field required"):
        load_config(
            ExampleStage,
            _write(tmp_path, GOOD.replace("  train: /tmp/d/sft_train.jsonl\n", "  eval: x\n")),
        )


def test_bad_yaml_names_file_and_line(tmp_path):
    path = _write(tmp_path, "model:\n  name_or_path: [unclosed\nrun: {}\n")
    with pytest.raises(ConfigError, match=r"stage.yaml: line \d+, column \d+: invalid YAML"):
        load_config(ExampleStage, path)


def test_top_level_must_be_mapping_and_file_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(ExampleStage, _write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(ExampleStage, tmp_path / "nope.yaml")


def test_constraints_are_enforced(tmp_path):
    with pytest.raises(ConfigError, match="resources.num_workers"):
        load_config(ExampleStage, _write(tmp_path, GOOD), ["resources.num_workers=0"])
    with pytest.raises(ConfigError, match="run.name"):
        load_config(ExampleStage, _write(tmp_path, GOOD), ["run.name=has space"])


def test_parse_override():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("x=[1, 2]") == (["x"], [1, 2])
    assert parse_override("s=hello") == (["s"], "hello")
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("novalue")
    with pytest.raises(ConfigError, match="empty key"):
        parse_override("a..b=1")


def test_every_field_has_a_description():
    for model in (ModelConfig, DataConfig, RunConfig, ResourcesConfig):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


def test_stage_paths_are_made_absolute_for_the_workers(tmp_path, monkeypatch):
    """Ray Train workers start in another directory than the driver: a relative local path
    in a config must reach them resolved, while hub ids pass unchanged."""
    from pipelines.stage_registry import load_stage
    from pipelines.training import absolute_local_paths

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("{}\n")
    (tmp_path / "sft").mkdir()
    monkeypatch.chdir(tmp_path)
    stage = load_stage("dpo")
    config = stage.config_cls.model_validate(
        {
            "model": {"name_or_path": "sft"},
            "data": {"train": "data/train.jsonl", "prompts_eval": "org/hub-dataset"},
            "run": {"name": "x"},
            "dpo": {"ref_model": "org/hub-model"},
        }
    )
    fixed = absolute_local_paths(config)
    assert fixed.model.name_or_path == str(tmp_path / "sft")
    assert fixed.data.train == str(tmp_path / "data" / "train.jsonl")
    assert fixed.data.prompts_eval == "org/hub-dataset"
    assert fixed.dpo.ref_model == "org/hub-model"
