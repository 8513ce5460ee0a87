"""The run registry: which checkpoints exist, from which stage, with which metrics.

One registry per pipeline storage path (a local folder or a URI, `rayalign.storage`):
each entry is a JSON object of its own, `<storage_path>/registry/checkpoints/<name>.json`,
written whole and atomically (a renamed temp file, or one object PUT). Registrations from
several processes, on several nodes, never read-modify-write a shared file, so none loses
another's entry, and no lock is needed where object storage has none. Datasets that
stages generate (RLAIF pairs, constitutional revisions) are registered beside them
(`registry/datasets/`), where the Serve app does not look. A `registry.json` written by
an earlier rayalign is read and moved into that layout on the first write.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import quote, unquote

from rayalign import storage

REGISTRY_DIR = "registry"
LEGACY_FILE = "registry.json"  # one file of every entry, before the per-entry layout
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
    """The registry under a storage path (a local folder or a URI)."""

    def __init__(self, storage_path: str | Path) -> None:
        self.root = storage.resolve(storage_path)
        self.location = storage.join(self.root, REGISTRY_DIR)

    def _folder(self, section: str) -> str:
        return storage.join(self.location, section)

    def _file(self, section: str, name: str) -> str:
        return storage.join(self._folder(section), quote(name, safe="") + ".json")

    def _read(self, section: str, cls):
        out = {}
        for file in storage.list_names(self._folder(section)):
            if file.endswith(".json"):
                try:
                    raw = json.loads(storage.read_text(storage.join(self._folder(section), file)))
                except FileNotFoundError:  # removed since the listing
                    continue
                out[unquote(file[: -len(".json")])] = cls(**raw)
        legacy = self._legacy().get(section, {})
        return {**{n: cls(**e) for n, e in legacy.items()}, **out}

    def _legacy(self) -> dict:
        path = storage.join(self.root, LEGACY_FILE)
        try:
            return json.loads(storage.read_text(path))
        except FileNotFoundError:
            return {}

    def _write(self, section: str, entry) -> None:
        self._migrate()
        storage.write_text(self._file(section, entry.name), json.dumps(asdict(entry), indent=2))

    def _migrate(self) -> None:
        """Move a legacy `registry.json`'s entries into the per-entry layout (idempotent:
        writers racing through it write the same objects)."""
        legacy = self._legacy()
        if not legacy:
            return
        for section in ("checkpoints", "datasets"):
            for name, raw in legacy.get(section, {}).items():
                file = self._file(section, name)
                if not storage.exists(file):
                    storage.write_text(file, json.dumps(raw, indent=2))
        storage.write_text(storage.join(self.root, LEGACY_FILE + ".migrated"), json.dumps(legacy))
        storage.remove(storage.join(self.root, LEGACY_FILE))

    def entries(self) -> dict[str, RegistryEntry]:
        """All checkpoint entries by name."""
        return self._read("checkpoints", RegistryEntry)

    def get(self, name: str) -> RegistryEntry | None:
        return self.entries().get(name)

    def register(self, entry: RegistryEntry) -> None:
        """Add or replace the entry named `entry.name`."""
        self._write("checkpoints", entry)

    def datasets(self) -> dict[str, DatasetEntry]:
        """All registered datasets by name."""
        return self._read("datasets", DatasetEntry)

    def register_dataset(self, entry: DatasetEntry) -> None:
        """Add or replace the dataset named `entry.name`."""
        self._write("datasets", entry)

    def remove(self, name: str) -> bool:
        """Drop a checkpoint entry (the checkpoint files stay). Returns whether it existed."""
        self._migrate()
        return storage.remove(self._file("checkpoints", name))
