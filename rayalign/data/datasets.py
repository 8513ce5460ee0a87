"""Load and validate stage data: local JSONL/Parquet files or HF dataset names.

Validation runs on the driver before any worker starts, so bad data stops a run
before training (and before any checkpoint could be overwritten). Every error
names the file, the row (1-based) and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from rayalign.data.io import DataError, read_jsonl

Format = Literal[
    "language_modeling", "prompt_completion", "preference", "unpaired", "prompt_only", "text"
]

# Fields each format requires, and the field that holds a conversation or string.
REQUIRED: dict[str, tuple[str, ...]] = {
    "language_modeling": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "preference": ("prompt", "chosen", "rejected"),
    "unpaired": ("prompt", "completion", "label"),
    "prompt_only": ("prompt",),
}


def load_rows(source: str, split: str = "train") -> list[dict[str, Any]]:
    """Rows of a .jsonl/.json-lines or .parquet file, or of split `split` of an HF dataset."""
    path = Path(source)
    if path.suffix in {".jsonl", ".json"}:
        return read_jsonl(path)
    if path.suffix == ".parquet":
        if not path.is_file():
            raise DataError(f"{path}: file does not exist")
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        if not rows:
            raise DataError(f"{path}: no rows")
        return rows
    if path.exists():
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl or .parquet")
    from datasets import load_dataset

    try:
        return load_dataset(source, split=split).to_list()
    except Exception as err:  # the hub client raises many types; the user needs the name
        raise DataError(
            f"{source}: not a local file and not a loadable HF dataset ({err})"
        ) from None


def _check_text(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise DataError(f"{where}: expected a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: empty text")


def _check_messages(value: Any, where: str, *, last_role: str | None = None) -> None:
    if isinstance(value, str):
        _check_text(value, where)
        return
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: expected a non-empty list of messages or a string")
    for i, msg in enumerate(value):
        if (
            not isinstance(msg, dict)
            or not isinstance(msg.get("role"), str)
            or "content" not in msg
        ):
            raise DataError(f"{where}[{i}]: expected a message {{'role': str, 'content': str}}")
        _check_text(msg["content"], f"{where}[{i}].content")
    if last_role and value[-1]["role"] != last_role:
        raise DataError(f"{where}: the last message must have role {last_role!r}")


def validate_rows(
    rows: list[dict[str, Any]], fmt: Format, source: str, text_field: str = "text"
) -> None:
    """Check every row of `rows` has the fields of `fmt` with the right types.

    Raises:
        DataError: naming `source`, the row and the field of the first problem.
    """
    for n, row in enumerate(rows, start=1):
        at = f"{source}, row {n}"
        if fmt == "text":
            if text_field not in row:
                raise DataError(f"{at}: missing field {text_field!r}")
            _check_text(row[text_field], f"{at}, field {text_field!r}")
            continue
        for name in REQUIRED[fmt]:
            if name not in row:
                raise DataError(
                    f"{at}: missing field {name!r} (format {fmt!r} needs {', '.join(REQUIRED[fmt])})"
                )
        if fmt == "language_modeling":
            _check_messages(row["messages"], f"{at}, field 'messages'", last_role="assistant")
            continue
        _check_messages(row["prompt"], f"{at}, field 'prompt'")
        answers = {"preference": ("chosen", "rejected"), "prompt_only": ()}.get(
            fmt, ("completion",)
        )
        for name in answers:
            _check_messages(row[name], f"{at}, field {name!r}")
        if fmt == "unpaired" and not isinstance(row["label"], bool):
            raise DataError(f"{at}, field 'label': expected true or false, got {row['label']!r}")


def detect_sft_format(row: dict[str, Any], text_field: str) -> Format:
    """Which SFT format a row is in: conversational messages, prompt/completion or raw text."""
    if "messages" in row:
        return "language_modeling"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if text_field in row:
        return "text"
    raise DataError(
        f"cannot tell the SFT format of the first row (fields {sorted(row)}); expected "
        f"'messages', 'prompt'+'completion', or the text field {text_field!r}"
    )


def load_validated(
    source: str, fmt: Format, split: str = "train", text_field: str = "text"
) -> list[dict]:
    """`load_rows` then `validate_rows`."""
    rows = load_rows(source, split)
    validate_rows(rows, fmt, source, text_field)
    return rows
