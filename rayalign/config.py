"""Typed stage configs loaded from YAML with `key=value` overrides.

Every stage has one pydantic model built from the shared pieces below. Unknown keys
and wrong types fail on load with a `ConfigError` naming the field and where its
value came from (the file, or the command-line override).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rayalign.storage import is_uri, join


class ConfigError(ValueError):
    """A config file or override that does not validate; the message names field and source."""


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Strict):
    name_or_path: str = Field(description="HF model id or local directory of the starting model.")
    revision: str | None = Field(
        None, description="Git revision of a hub model (branch, tag or commit)."
    )
    trust_remote_code: bool = Field(
        False,
        description="Allow model code from the model repository to run. Off unless you trust it.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights dtype for training and inference; bfloat16 on GPUs."
    )


class DatasetSource(Strict):
    """A dataset to read: `path` alone is the same as a plain string."""

    path: str = Field(
        description=(
            "HF hub dataset name, or a local .jsonl/.json/.parquet/.csv/.arrow file, a "
            "directory in the hub's layout, or a `save_to_disk` directory."
        )
    )
    subset: str | None = Field(
        None, description="Dataset configuration (the hub's subset), e.g. 'main' for gsm8k."
    )
    split: str | None = Field(
        None, description="Split to read; default 'train' for training data, 'test' for held-out."
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Renames from the dataset's column to the field rayalign reads, "
        "e.g. {question: prompt, answer: ground_truth}.",
    )
    revision: str | None = Field(None, description="Git revision of a hub dataset.")


Source = str | DatasetSource
TRAIN_SPLIT = "train"  # the split read when a training source names none
EVAL_SPLIT = "test"  # and a held-out one


class DataConfig(Strict):
    train: Source = Field(
        description="Training data: a file, a directory or an HF dataset name (split 'train'), "
        "or a mapping {path, subset, split, columns}."
    )
    eval: Source | None = Field(
        None,
        description="Held-out data of the same format (split 'test' of a dataset), or none.",
    )
    prompts_eval: Source | None = Field(
        None,
        description="Held-out prompts with ground truth (prompts_test.jsonl) for exact-match accuracy.",
    )
    preference_eval: Source | None = Field(
        None,
        description="Held-out preference pairs (preference_test.jsonl) for the log-prob margin.",
    )
    max_length: int = Field(
        256, ge=8, description="Longest tokenized sequence; longer rows are truncated."
    )

    def splits(self) -> list[tuple[Source, str]]:
        """The training source and the held-out one (if any), each with its default split."""
        return [(self.train, TRAIN_SPLIT)] + ([(self.eval, EVAL_SPLIT)] if self.eval else [])


class LoraConfig(Strict):
    """LoRA adapters (peft) instead of training every weight."""

    r: int = Field(16, ge=1, description="Rank of each adapter's update.")
    alpha: float = Field(32, gt=0, description="Scale: the update is multiplied by alpha / r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapters' input.")
    target_modules: str | list[str] = Field(
        "all-linear",
        description="Layers that get adapters: 'all-linear' (every linear layer but the "
        "output head), or module names such as [q_proj, v_proj].",
    )

    def peft_config(self, task_type: str = "CAUSAL_LM"):
        """The `peft.LoraConfig`; a sequence classifier's new score head is trained whole."""
        from peft import LoraConfig as PeftLoraConfig

        return PeftLoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            task_type=task_type,
        )


class RunConfig(Strict):
    name: str = Field(
        description="Run name; rerunning with the same name resumes it.",
        pattern=r"^[A-Za-z0-9._-]+$",
    )
    storage_path: str = Field(
        "runs",
        description="Directory or object-storage URI (s3://bucket/prefix, gs://...) holding "
        "runs, checkpoints and the registry, for every stage.",
    )
    seed: int = Field(0, description="Random seed for data order and initialisation.")

    @property
    def run_dir(self) -> Path | str:
        """The run's folder: a local Path (absolute), or a URI in object storage."""
        if is_uri(self.storage_path):
            return join(self.storage_path, self.name)
        return Path(self.storage_path).resolve() / self.name


class ResourcesConfig(Strict):
    num_workers: int = Field(1, ge=1, description="Data-parallel training workers.")
    use_gpu: bool = Field(
        False, description="One GPU per worker, NCCL backend; gloo on CPU otherwise."
    )
    cpus_per_worker: float = Field(1.0, gt=0, description="Logical CPUs reserved per worker.")
    custom_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources per worker, e.g. {learner: 1} for learner nodes.",
    )


C = TypeVar("C", bound=BaseModel)


def resolve_local(value: str | None) -> str | None:
    """An existing local path made absolute (from this process's directory); anything else,
    such as a hub id, unchanged. Ray actors and workers start in another directory."""
    return str(Path(value).resolve()) if value and Path(value).exists() else value


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b=value` into (["a", "b"], value) with the value parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def _set_path(data: dict[str, Any], parts: list[str], value: Any, origin: str) -> None:
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if isinstance(child, str):  # a dataset source's shorthand: data.train.split=... works
            child = node[part] = {"path": child}
        if not isinstance(child, dict):
            raise ConfigError(f"{origin}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; parse errors name the file, line and column."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{p}:{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{p}: the top level must be a mapping of sections, got {type(data).__name__}"
        )
    return data


def load_config(cls: type[C], path: str | Path | None, overrides: list[str] = ()) -> C:
    """Load `cls` from the YAML file at `path` (or nothing) with `key=value` overrides applied.

    Raises:
        ConfigError: naming each bad field, its value's source and what was expected.
    """
    data = read_yaml(path) if path is not None else {}
    source_of: dict[str, str] = {}
    for text in overrides:
        parts, value = parse_override(text)
        _set_path(data, parts, value, f"override {text!r}")
        source_of[".".join(parts)] = f"override {text!r}"
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        file_label = str(path) if path is not None else "defaults"
        lines = []
        for e in err.errors():
            field = ".".join(str(x) for x in e["loc"]) or "(top level)"
            source = source_of.get(field, file_label)
            got = "" if e["type"] == "missing" else f" (got {e.get('input')!r})"
            lines.append(f"  {field}: {e['msg']}{got} [{source}]")
        raise ConfigError(
            f"invalid {cls.__name__} config from {file_label}:\n" + "\n".join(lines)
        ) from None
