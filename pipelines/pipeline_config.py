"""Typed config of a pipeline: stages, what each waits for, how each runs as a Ray job."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, model_validator

from pipelines.stage_registry import STAGE_NAMES
from rayalign.config import Strict

TrainStage = Literal[STAGE_NAMES]  # the stage registry's names
_REF = re.compile(r"\$\{([A-Za-z0-9._-]+)\}")


class StageSpec(Strict):
    """One node of the pipeline: a training stage, or a `rayalign` command (model, data)."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Unique name: the stage's run name and its registry name.",
    )
    stage: TrainStage | None = Field(
        None, description="Training stage to run (its job: python -m pipelines train <stage>)."
    )
    config: str | None = Field(None, description="The training stage's YAML config.")
    overrides: list[str] = Field(
        default_factory=list,
        description=(
            "KEY=VALUE config overrides. ${storage} is the pipeline's storage path, "
            "${NAME.path} the checkpoint stage NAME registered."
        ),
    )
    rayalign: list[str] | None = Field(
        None, description="Instead of a stage: rayalign CLI arguments (e.g. init-model ...)."
    )
    after: list[str] = Field(
        default_factory=list, description="Stages that must succeed before this one starts."
    )
    optional: bool = Field(
        False,
        description=(
            "Run only when named in the pipeline's `include` (e.g. the safety stages: "
            "`rayalign pipeline run --with rlaif`)."
        ),
    )

    @model_validator(mode="after")
    def _one_kind(self) -> StageSpec:
        if (self.stage is None) == (self.rayalign is None):
            raise ValueError(f"stage {self.name!r} needs exactly one of 'stage' or 'rayalign'")
        if self.stage and not self.config:
            raise ValueError(f"stage {self.name!r} runs {self.stage!r} and needs a 'config'")
        return self

    def references(self) -> set[str]:
        """Stage names this stage's arguments refer to as ${NAME.path}."""
        words = [*self.overrides, *(self.rayalign or [])]
        return {m.split(".")[0] for w in words for m in _REF.findall(w) if "." in m}


class PipelineConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$", description="Pipeline name.")
    storage_path: str = Field(
        description="Where every stage stores runs and registers checkpoints (its registry/ folder)."
    )
    max_parallel: int = Field(
        1, ge=1, description="Stages running at once (branches whose parents are done)."
    )
    runtime_env: dict[str, Any] = Field(
        default_factory=dict,
        description="Ray runtime_env of every job (env_vars, pip...); working_dir is set for you.",
    )
    stages: list[StageSpec] = Field(min_length=1, description="The stages, in any order.")
    include: list[str] = Field(
        default_factory=list, description="Optional stages to run this time (by name)."
    )

    @model_validator(mode="after")
    def _graph(self) -> PipelineConfig:
        names = [s.name for s in self.stages]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"stage names must be unique; repeated: {dupes}")
        known = set(names)
        for s in self.stages:
            missing = sorted((set(s.after) | s.references()) - known)
            if missing:
                raise ValueError(f"stage {s.name!r} refers to unknown stages {missing}")
            if s.references() - set(s.after):
                raise ValueError(
                    f"stage {s.name!r} uses the checkpoints of {sorted(s.references())}: "
                    "list them in 'after'"
                )
        by_name = {s.name: s for s in self.stages}
        for s in self.stages:
            needs = sorted(a for a in s.after if by_name[a].optional)
            if needs and not s.optional:
                raise ValueError(f"stage {s.name!r} is not optional but waits for {needs}")
        for name in self.include:
            if name not in by_name or not by_name[name].optional:
                optional = sorted(n for n, st in by_name.items() if st.optional)
                raise ValueError(
                    f"include: {name!r} is not an optional stage (optional: {optional or 'none'})"
                )
        self.ordered()
        return self

    def active(self) -> PipelineConfig:
        """This pipeline without the optional stages it does not include (nor their children)."""
        dropped = {s.name for s in self.stages if s.optional and s.name not in self.include}
        for name in list(dropped):
            dropped.update(self.children(name))
        if not dropped:
            return self
        return self.model_copy(update={"stages": [s for s in self.stages if s.name not in dropped]})

    def ordered(self) -> list[StageSpec]:
        """The stages in dependency order (parents first), else ValueError naming a cycle."""
        order: list[StageSpec] = []
        done: set[str] = set()
        while len(order) < len(self.stages):
            ready = [s for s in self.stages if s.name not in done and set(s.after) <= done]
            if not ready:
                cycle = sorted({s.name for s in self.stages} - done)
                raise ValueError(f"the stages {cycle} wait for each other (a cycle)")
            order.extend(ready)
            done.update(s.name for s in ready)
        return order

    def children(self, name: str) -> list[str]:
        """Every stage that (transitively) waits for `name`."""
        out, frontier = [], [name]
        while frontier:
            current = frontier.pop()
            for s in self.stages:
                if current in s.after and s.name not in out:
                    out.append(s.name)
                    frontier.append(s.name)
        return out


def substitute(text: str, values: dict[str, str]) -> str:
    """Replace ${key} in `text` with values[key]; unknown keys are an error."""

    def one(match: re.Match) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"{text!r}: ${{{key}}} is not known yet (known: {sorted(values)})")
        return values[key]

    return _REF.sub(one, text)
