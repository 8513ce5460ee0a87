"""The run registry: which checkpoints exist, from which stage, with which metrics.

One JSON file per pipeline storage path (`<storage_path>/registry.json`). Stages
add an entry when they finish; the Serve app reads it. Writes hold a file lock and
replace the file atomically, so concurrent stages never lose each other's entries.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

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

    def _read(self) -> dict[str, RegistryEntry]:
        if not self.path.exists():
            return {}
        raw = json.loads(self.path.read_text())
        return {name: RegistryEntry(**entry) for name, entry in raw.get("checkpoints", {}).items()}

    def _write(self, entries: dict[str, RegistryEntry]) -> None:
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        body = {"checkpoints": {name: asdict(e) for name, e in sorted(entries.items())}}
        tmp.write_text(json.dumps(body, indent=2) + "\n")
        os.replace(tmp, self.path)

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

    def remove(self, name: str) -> bool:
        """Drop an entry (the checkpoint files stay). Returns whether it existed."""
        with self._locked():
            entries = self._read()
            existed = entries.pop(name, None) is not None
            if existed:
                self._write(entries)
            return existed
