"""Read local JSONL/Parquet datasets row by row with errors that name file and line;
write files so that a reader sees the old content or the new, never a torn one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Malformed training or evaluation data; the message names file, row and field."""


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a JSONL file; blank lines are skipped, row numbers are 1-based lines."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file does not exist")
    rows = []
    with p.open() as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{p}, row {line_no}: not valid JSON ({err.msg} at column {err.colno})"
                ) from None
            if not isinstance(row, dict):
                raise DataError(
                    f"{p}, row {line_no}: expected a JSON object, got {type(row).__name__}"
                )
            rows.append(row)
    if not rows:
        raise DataError(f"{p}: no rows")
    return rows


def write_atomic(path: str | Path, text: str) -> None:
    """Replace `path` with `text` atomically: a crash leaves the old file or the new one.

    The temporary file is named per process, so writers in several processes never
    share one; the data is fsynced before the rename.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f"{p.name}.tmp{os.getpid()}")
    try:
        with tmp.open("w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)  # only there if the write failed


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Replace `path` with `rows`, one JSON object per line, atomically (`write_atomic`)."""
    write_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))
