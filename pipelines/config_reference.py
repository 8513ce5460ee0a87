"""docs/configuration.md, generated from the config models (`rayalign config-reference`).

Every field of every stage's config with its type, default and description, so the
reference can never drift from the code (a test compares the file with this output).
"""

from __future__ import annotations

import json
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from rayalign.config import DatasetSource


def _models() -> list[tuple[str, str, type[BaseModel]]]:
    from pipelines.pipeline_config import PipelineConfig
    from pipelines.stage_registry import REGISTRY
    from serving.config import ServingConfig

    stages = [
        (name, f"`rayalign train {name}` ({entry.summary})", entry.load().config_cls)
        for name, entry in REGISTRY.items()
    ]
    return [
        *stages,
        ("pipeline", "`rayalign pipeline run --config`", PipelineConfig),
        ("serve", "`rayalign serve --config`", ServingConfig),
    ]


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in get_args(annotation))
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "").replace("pipelines.", "").replace("NoneType", "None")


def _default(field) -> str:
    if field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:
            return "(default)"
        if isinstance(value, BaseModel):
            return "(section)"
        return f"`{json.dumps(value)}`"
    if field.default is PydanticUndefined:
        return "**required**"
    return f"`{json.dumps(field.default)}`"


def _section_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _rows(model: type[BaseModel], prefix: str = "") -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        nested = _section_model(field.annotation)
        if nested is DatasetSource:  # one shared shape, described once below
            optional = " or None" if type(None) in get_args(field.annotation) else ""
            kind = f"str or [dataset source](#dataset-sources){optional}"
            rows.append(f"| `{key}` | {kind} | {_default(field)} | {field.description or ''} |")
            continue
        if nested is not None and "StageSpec" not in nested.__name__:
            rows.append(f"| `{key}` | section | {_default(field)} | {field.description or ''} |")
            rows.extend(_rows(nested, f"{key}."))
            continue
        kind = _type_name(field.annotation).replace("|", "or")
        rows.append(f"| `{key}` | {kind} | {_default(field)} | {field.description or ''} |")
    return rows


def _owned_trainer_keys() -> list[str]:
    """The TRL config arguments that a `trainer:` entry may not set, and why."""
    from importlib import import_module

    from pipelines.stage_registry import REGISTRY
    from pipelines.trainer_inputs import DEFAULT_ARGS, OWNED
    from pipelines.training import Stage

    recipes = [getattr(import_module(entry.module), "TRAINER", None) for entry in REGISTRY.values()]
    recipes = [r for r in recipes if isinstance(r, Stage)]
    out = [
        "## Trainer arguments rayalign sets itself",
        "",
        "`trainer:` passes any other argument of the stage's TRL config class "
        f"({', '.join(f'{r.name}: `{r.trl_config}`' for r in recipes)}). These it refuses, "
        "each with the setting that owns it: rayalign needs them to checkpoint through Ray "
        "Train, resume exactly, log, and split the batch over workers.",
        "",
        "| argument | stages | set by |",
        "| --- | --- | --- |",
        *(f"| `{key}` | all | {why} |" for key, why in OWNED.items()),
    ]
    stage_keys: dict[tuple[str, str], list[str]] = {}
    for recipe in recipes:
        for key, why in recipe.owned.items():
            stage_keys.setdefault((key, why), []).append(recipe.name)
    out += [f"| `{key}` | {', '.join(names)} | {why} |" for (key, why), names in stage_keys.items()]
    defaults = ", ".join(f"`{k}={v!r}`" for k, v in DEFAULT_ARGS.items())
    return [*out, "", f"Defaults that `trainer:` may change: {defaults}.", ""]


def render() -> str:
    """The whole reference as Markdown."""
    out = [
        "# Configuration reference",
        "",
        "Generated from the config models by `rayalign config-reference`; do not edit by hand.",
        "Every config is YAML; unknown keys are errors, and any field can be overridden on the",
        "command line as `dotted.key=value` (`--set` for `pipeline` and `serve`).",
        "",
    ]
    for title, how, model in _models():
        out += [f"## {title}", "", f"{how}: `{model.__name__}`", ""]
        out += ["| key | type | default | description |", "| --- | --- | --- | --- |"]
        out += _rows(model)
        out.append("")
    out += _owned_trainer_keys()
    out += [
        "## Dataset sources",
        "",
        "A data field takes a path or hub name, or this mapping (`rayalign.data.sources`):",
        "",
        "| key | type | default | description |",
        "| --- | --- | --- | --- |",
        *_rows(DatasetSource),
        "",
    ]
    return "\n".join(out)
