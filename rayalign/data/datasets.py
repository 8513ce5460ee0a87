"""Load and validate stage data from any `rayalign.data.sources` source.

Validation runs on the driver before any worker starts, so bad data stops a run
before training (and before any checkpoint could be overwritten). Every error
names the file, the row (1-based) and the field.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from rayalign.config import Source
from rayalign.data.io import DataError
from rayalign.data.sources import TRAIN_SPLIT, describe, open_rows

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


def load_rows(source: Source, split: str = TRAIN_SPLIT):
    """The rows of `source` (see `rayalign.data.sources`): a list for a JSON-lines file,
    a memory-mapped `datasets.Dataset` otherwise; `split` is the default split."""
    return open_rows(source, split)


def _conversational(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict)


def extract_prompt(row: dict[str, Any], where: str = "row") -> dict[str, Any]:
    """A preference row with an explicit prompt, as TRL's `maybe_extract_prompt` makes it.

    Rows whose `prompt` has the form of their answers (both messages, or both strings)
    are returned as they are. Otherwise (no prompt, as in `trl-lib/ultrafeedback_binarized`,
    or a string prompt beside whole conversations, as in `HuggingFaceH4/...`) the longest
    common prefix of `chosen` and `rejected` becomes the prompt and the rest the answers.
    Other columns are kept.
    """
    if "chosen" not in row or "rejected" not in row:
        return row
    chosen, rejected = row["chosen"], row["rejected"]
    if "prompt" in row and _conversational(row["prompt"]) == _conversational(chosen):
        return row
    if not isinstance(chosen, list | str) or type(chosen) is not type(rejected):
        return row  # validation names the field
    idx = 0
    while idx < min(len(chosen), len(rejected)) and chosen[idx] == rejected[idx]:
        idx += 1
    if idx == min(len(chosen), len(rejected)):
        raise DataError(
            f"{where}: no prompt field, and 'chosen' and 'rejected' do not differ after their "
            "common prefix, so no prompt can be taken from them"
        )
    if idx and isinstance(chosen, str) and chosen[idx - 1] == " ":
        idx -= 1  # the answers keep their leading space, as in TRL
    return {**row, "prompt": chosen[:idx], "chosen": chosen[idx:], "rejected": rejected[idx:]}


def load_preference_rows(source: Source, split: str = TRAIN_SPLIT) -> list[dict[str, Any]]:
    """Preference rows of `source` with explicit prompts (`extract_prompt`), validated;
    for held-out sets that the driver scores."""
    where = describe(source, split)
    rows = [
        extract_prompt(row, f"{where}, row {n}")
        for n, row in enumerate(load_rows(source, split), start=1)
    ]
    validate_rows(rows, "preference", where)
    return rows


def _check_text(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise DataError(f"{where}: expected a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: empty text")


def check_messages(value: Any, where: str, *, last_role: str | None = None) -> None:
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
    rows: Iterable[dict[str, Any]], fmt: Format, source: str, text_field: str = "text"
) -> None:
    """Check every row of `rows` has the fields of `fmt` with the right types; preference
    rows are checked as `extract_prompt` makes them.

    Raises:
        DataError: naming `source`, the row and the field of the first problem.
    """
    for n, row in enumerate(rows, start=1):
        at = f"{source}, row {n}"
        if fmt == "preference":
            row = extract_prompt(row, at)
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
            check_messages(row["messages"], f"{at}, field 'messages'", last_role="assistant")
            continue
        check_messages(row["prompt"], f"{at}, field 'prompt'")
        answers = {"preference": ("chosen", "rejected"), "prompt_only": ()}.get(
            fmt, ("completion",)
        )
        for name in answers:
            check_messages(row[name], f"{at}, field {name!r}")
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


def load_validated(source: Source, fmt: Format, split: str = TRAIN_SPLIT, text_field: str = "text"):
    """`load_rows` then `validate_rows`; the error names the source and its split."""
    rows = load_rows(source, split)
    validate_rows(rows, fmt, describe(source, split), text_field)
    return rows
