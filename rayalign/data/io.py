"""Read local JSONL/Parquet datasets row by row with errors that name file and line;
write files so that a reader sees the old content or the new, never a torn one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rayalign.storage import write_atomic


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


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Replace `path` with `rows`, one JSON object per line, atomically (`write_atomic`)."""
    write_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))
