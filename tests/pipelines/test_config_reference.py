"""docs/configuration.md is what the config models say today."""

from pathlib import Path

from pipelines.config_reference import render
from rayalign.rl_config import PPOStageConfig

ROOT = Path(__file__).resolve().parents[2]


def test_reference_is_up_to_date():
    written = (ROOT / "docs" / "configuration.md").read_text()
    assert written == render(), "regenerate: rayalign config-reference > docs/configuration.md"


def test_every_field_is_listed_with_its_description():
    text = render()
    for name, field in PPOStageConfig.model_fields["rl"].annotation.model_fields.items():
        assert f"| `rl.{name}` |" in text and field.description in text
    assert "| `chat.replicas.max_replicas` |" in text  # serving sections nest
