"""The stage registry: the one list of training stages.

`rayalign train`, the Ray job entrypoint (`python -m pipelines train STAGE`), the
pipeline runner and the config reference all read `REGISTRY`. Adding a stage means one
module that exports `STAGE` (a `StageDefinition`) and one `RegisteredStage` line below.

Stage modules are imported only when a stage is used, so the CLI starts without
loading every trainer, and the registry imports no stage module statically.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from rayalign.registry import DatasetEntry, RegistryEntry


@dataclass(frozen=True)
class StageDefinition:
    """What a stage module exports as `STAGE`.

    Args:
        name: the registry name (`rayalign train NAME`).
        config_cls: the stage's strict config model, loaded from its YAML.
        run: runs (or resumes) the stage to the end and returns what it registered.
    """

    name: str
    config_cls: type[BaseModel]
    run: Callable[[Any], RegistryEntry | DatasetEntry]


@dataclass(frozen=True)
class RegisteredStage:
    """One line of the registry: where the stage lives and what it does."""

    name: str
    module: str
    summary: str

    def load(self) -> StageDefinition:
        definition = importlib.import_module(self.module).STAGE
        if definition.name != self.name:
            raise RuntimeError(
                f"{self.module}.STAGE is named {definition.name!r}, not {self.name!r}"
            )
        return definition


REGISTRY: dict[str, RegisteredStage] = {
    s.name: s
    for s in (
        RegisteredStage("sft", "pipelines.sft", "supervised fine-tuning and continued pretraining"),
        RegisteredStage("reward_model", "pipelines.reward_model", "Bradley-Terry reward model"),
        RegisteredStage("dpo", "pipelines.dpo", "DPO / IPO on preference pairs"),
        RegisteredStage("kto", "pipelines.kto", "KTO on unpaired desirable/undesirable answers"),
        RegisteredStage("ppo", "pipelines.ppo", "online RL: PPO, GRPO, RLOO"),
        RegisteredStage("constitutional", "pipelines.constitutional", "critique and revise"),
        RegisteredStage("rlaif", "pipelines.rlaif", "AI-labelled preference pairs"),
    )
}
STAGE_NAMES: tuple[str, ...] = tuple(REGISTRY)


def load_stage(name: str) -> StageDefinition:
    """The definition of the registered stage `name`.

    Raises:
        ValueError: `name` is not a registered stage (the message lists them).
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown stage {name!r}; registered stages: {', '.join(STAGE_NAMES)}")
    return REGISTRY[name].load()
