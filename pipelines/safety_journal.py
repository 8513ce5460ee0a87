"""What a safety stage keeps on disk while it runs, so that an interrupted attempt loses
nothing and a rerun continues it.

Under `<run>/data/`: `settings.json` (what the rows depend on; a rerun under other
settings is refused), the policy's answers, and one journal per kind of finished work
item (revised chains, labelled pairs), appended and fsynced a batch at a time.

A run in object storage keeps the folder locally and copies it to the bucket after each
write (`keep`); a rerun, on any machine, starts from the bucket's copy.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from pipelines.safety_config import SafetyStageConfig
from rayalign import storage
from rayalign.data.io import DataError
from rayalign.storage import LocalMirror, write_atomic

logger = logging.getLogger(__name__)


_MIRRORS: dict[str, LocalMirror] = {}


def data_files(config: SafetyStageConfig, fresh: bool = False) -> LocalMirror:
    """The run's data folder (`<run>/data`, local or in object storage) as a local folder.
    `fresh` (at the start of an attempt) reads it from storage again; otherwise the
    attempt's folder is reused."""
    path = storage.join(config.run_dir, "data")
    if fresh:
        release(config)
    if path not in _MIRRORS:
        mirror = LocalMirror(path)
        mirror.pull()
        _MIRRORS[path] = mirror
    return _MIRRORS[path]


def release(config: SafetyStageConfig) -> None:
    """Forget the attempt's local copy of the data folder (a temporary folder for a run in
    object storage, removed here); every write was pushed when it was made."""
    mirror = _MIRRORS.pop(storage.join(config.run_dir, "data"), None)
    if mirror is not None:
        mirror.close(push=False)


def data_dir(config: SafetyStageConfig) -> Path:
    """The local folder of the run's data (`data_files`)."""
    return data_files(config).local


def keep(config: SafetyStageConfig) -> None:
    """Copy the data folder to the run's storage (nothing to do for a local run)."""
    data_files(config).push()


def read_journal(path: Path) -> list[dict]:
    """The rows earlier attempts appended to `path` (JSON lines). A torn last line (an
    attempt killed mid-write) is cut off the file; any other bad line is an error."""
    if not path.exists():
        return []
    data = path.read_bytes()
    rows: list[dict] = []
    good = 0
    lines = data.splitlines(keepends=True)
    for number, line in enumerate(lines, 1):
        try:
            if not line.endswith(b"\n"):
                raise ValueError("no end of line")
            rows.append(json.loads(line))
        except ValueError as err:
            if number < len(lines):
                raise DataError(f"{path}: line {number} is not JSON ({err})") from None
            logger.warning(f"{path}: dropping a torn last line (line {number})")
            break
        good += len(line)
    if good < len(data):
        with path.open("r+b") as f:
            f.truncate(good)
    return rows


def append_journal(path: Path, rows: list[dict]) -> None:
    """Append `rows` to `path` as JSON lines, on disk before this returns."""
    with path.open("a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def check_settings(config: SafetyStageConfig, settings: dict[str, Any]) -> None:
    """Rows kept by an earlier attempt continue only under the settings that made them.

    The first attempt writes `<run>/data/settings.json`; a rerun whose settings differ
    (another critic, seed, prompt file...) is refused with the keys that changed, rather
    than mixing rows of two setups in one dataset.
    """
    path = data_dir(config) / "settings.json"
    settings = json.loads(json.dumps(settings))  # as it reads back
    if not path.exists():
        write_atomic(path, json.dumps(settings, indent=2) + "\n")
        keep(config)
        return
    before = json.loads(path.read_text())
    changed = sorted(k for k in before.keys() | settings.keys() if before.get(k) != settings.get(k))
    if changed:
        raise ValueError(
            f"{config.run.name}: {data_files(config).path} holds rows of an earlier attempt made "
            f"with other settings ({', '.join(changed)} changed; see {path}). Rerun with "
            "the same settings to continue it, or choose another run.name"
        )


def kept_progress(config: SafetyStageConfig) -> str:
    """What of an unfinished attempt is on disk, for the message when it stops."""
    data = data_dir(config)
    kept = []
    for name, what in (
        ("answers.jsonl", "the policy's answers to {} prompts"),
        ("chains.jsonl", "{} revised answers"),
        ("labels.jsonl", "{} labelled pairs"),
    ):
        if (data / name).exists():
            with (data / name).open("rb") as f:
                kept.append(what.format(sum(1 for line in f if line.endswith(b"\n"))))
    if not kept:
        return "nothing kept yet; a rerun starts over"
    where = data_files(config).path
    return f"kept {', '.join(kept)} in {where}; rerun the same command to continue"


class Journal:
    """A safety stage's finished work items (revised chains, labelled pairs), numbered
    0..total-1 and appended to `<run>/data/<name>` a batch at a time as they are done; the
    items an earlier attempt finished are read back and not done again."""

    def __init__(self, config: SafetyStageConfig, name: str, total: int, what: str) -> None:
        self.config, self.total, self.what = config, total, what
        self.path = data_dir(config) / name
        self.rows = {row["id"]: row for row in read_journal(self.path)}
        if self.rows:
            logger.info(
                f"[{config.run.name}] continuing: {len(self.rows)} of {total} {what} by an "
                f"earlier attempt ({self.path})"
            )

    def todo(self) -> list[list[int]]:
        """The items not done yet, `save_every` at a time."""
        ids = [i for i in range(self.total) if i not in self.rows]
        size = self.config.save_every
        return [ids[start : start + size] for start in range(0, len(ids), size)]

    def add(self, rows: list[dict]) -> None:
        """Keep a finished batch (each row with its item's "id") on disk, then in memory."""
        append_journal(self.path, rows)
        keep(self.config)
        self.rows.update((row["id"], row) for row in rows)
        logger.info(f"[{self.config.run.name}] {len(self.rows)}/{self.total} {self.what}")

    def ordered(self) -> list[dict]:
        return [self.rows[i] for i in range(self.total)]
