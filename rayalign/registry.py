"""The run registry: which checkpoints exist, from which stage, with which metrics.

One JSON file per pipeline storage path (`<storage_path>/registry.json`). Stages
add an entry when they finish; the Serve app reads it. Writes hold a file lock and
replace the file atomically, so concurrent stages never lose each other's entries.
Datasets that stages generate (RLAIF pairs, constitutional revisions) are registered
in the same file, in a section of their own that the Serve app does not read.
"""

from __future__ import annotations

import fcntl
import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from rayalign.data.io import write_atomic

REGISTRY_FILE = "registry.json"
Kind = Literal["chat", "reward"]


@dataclass
class RegistryEntry:
    """One registered checkpoint.

    Attributes:
        name: unique name, also the served model name (`sft`, `dpo`, `ppo-step-40`).
        stage: the stage that produced it (`base`, `sft`, `reward_model`, `dpo`, `kto`, `ppo`...).
        kind: `chat` (a causal LM) or `reward` (a sequence-classification scorer).
        path: absolute path of a self-contained HF directory.
        parent: the checkpoint (name or path) training started from.
        step: optimizer steps taken by the stage.
        metrics: final metrics (held-out accuracy, reward accuracy, losses...).
        created: UNIX time of registration.
    """

    name: str
    stage: str
    kind: Kind
    path: str
    parent: str | None = None
    step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    created: float = field(default_factory=time.time)


@dataclass
class DatasetEntry:
    """One registered dataset (a split a stage generated, e.g. RLAIF's preference pairs).

    Attributes:
        name: unique name among datasets (`rlaif-preference`).
        stage: the stage that generated it.
        format: its TRL format (`preference`, `language_modeling`...).
        path: absolute path of the JSONL file.
        parent: the checkpoint whose answers it was made from.
        rows: number of rows.
        metrics: how it was made (pairs kept, agreement rate...).
        created: UNIX time of registration.
    """

    name: str
    stage: str
    format: str
    path: str
    parent: str | None = None
    rows: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    created: float = field(default_factory=time.time)


class Registry:
    """The registry file under a storage path."""

    def __init__(self, storage_path: str | Path) -> None:
        self.root = Path(storage_path)
        self.path = self.root / REGISTRY_FILE

    @contextmanager
    def _locked(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / (REGISTRY_FILE + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _raw(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def _read(self) -> dict[str, RegistryEntry]:
        raw = self._raw()
        return {name: RegistryEntry(**entry) for name, entry in raw.get("checkpoints", {}).items()}

    def _write(
        self,
        entries: dict[str, RegistryEntry],
        datasets: dict[str, DatasetEntry] | None = None,
    ) -> None:
        """Replace the file atomically; `datasets=None` keeps the datasets section as it is."""
        body = self._raw()
        body["checkpoints"] = {name: asdict(e) for name, e in sorted(entries.items())}
        if datasets is not None:
            body["datasets"] = {name: asdict(e) for name, e in sorted(datasets.items())}
        write_atomic(self.path, json.dumps(body, indent=2) + "\n")

    def entries(self) -> dict[str, RegistryEntry]:
        """All entries by name."""
        with self._locked():
            return self._read()

    def get(self, name: str) -> RegistryEntry | None:
        return self.entries().get(name)

    def register(self, entry: RegistryEntry) -> None:
        """Add or replace the entry named `entry.name`."""
        with self._locked():
            entries = self._read()
            entries[entry.name] = entry
            self._write(entries)

    def datasets(self) -> dict[str, DatasetEntry]:
        """All registered datasets by name."""
        with self._locked():
            raw = self._raw().get("datasets", {})
            return {name: DatasetEntry(**entry) for name, entry in raw.items()}

    def register_dataset(self, entry: DatasetEntry) -> None:
        """Add or replace the dataset named `entry.name` (checkpoints are untouched)."""
        with self._locked():
            raw = self._raw().get("datasets", {})
            datasets = {name: DatasetEntry(**e) for name, e in raw.items()}
            datasets[entry.name] = entry
            self._write(self._read(), datasets)

    def remove(self, name: str) -> bool:
        """Drop an entry (the checkpoint files stay). Returns whether it existed."""
        with self._locked():
            entries = self._read()
            existed = entries.pop(name, None) is not None
            if existed:
                self._write(entries)
            return existed
