"""Bad data stops a stage before training, naming file, row and field."""

import json

import pytest

from rayalign.data.datasets import detect_sft_format, load_rows, validate_rows
from rayalign.data.io import DataError

USER = [{"role": "user", "content": "What is 1 + 1?"}]
GOOD = {
    "language_modeling": {"messages": USER + [{"role": "assistant", "content": "2"}]},
    "preference": {
        "prompt": USER,
        "chosen": [{"role": "assistant", "content": "2"}],
        "rejected": [{"role": "assistant", "content": "3"}],
    },
    "unpaired": {
        "prompt": USER,
        "completion": [{"role": "assistant", "content": "2"}],
        "label": True,
    },
}


def _write(tmp_path, rows, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("fmt", sorted(GOOD))
def test_good_rows_pass(tmp_path, fmt):
    path = _write(tmp_path, [GOOD[fmt]] * 3)
    validate_rows(load_rows(str(path)), fmt, str(path))


@pytest.mark.parametrize(
    ("fmt", "mutate", "expected"),
    [
        ("preference", lambda r: r.pop("rejected"), "row 2: missing field 'rejected'"),
        (
            "unpaired",
            lambda r: r.update(label="yes"),
            "row 2, field 'label': expected true or false",
        ),
        (
            "preference",
            lambda r: r.update(chosen=[{"role": "assistant", "content": "  "}]),
            "row 2, field 'chosen'[0].content: empty text",
        ),
        ("unpaired", lambda r: r.update(completion=""), "row 2, field 'completion': empty text"),
        (
            "language_modeling",
            lambda r: r.update(messages=USER),
            "row 2, field 'messages': the last message must have role 'assistant'",
        ),
        (
            "preference",
            lambda r: r.update(prompt=42),
            "row 2, field 'prompt': expected a non-empty list of messages",
        ),
        (
            "language_modeling",
            lambda r: r["messages"][1].update(content=7),
            "row 2, field 'messages'[1].content: expected a string, got int",
        ),
    ],
)
def test_each_malformation_names_file_row_field(tmp_path, fmt, mutate, expected):
    bad = json.loads(json.dumps(GOOD[fmt]))
    mutate(bad)
    path = _write(tmp_path, [GOOD[fmt], bad, GOOD[fmt]])
    with pytest.raises(DataError) as err:
        validate_rows(load_rows(str(path)), fmt, str(path))
    assert str(err.value).startswith(f"{path}, {expected}")


def test_unparsable_line_names_row(tmp_path):
    path = _write(tmp_path, [GOOD["preference"], '{"prompt": [', GOOD["preference"]])
    with pytest.raises(DataError, match=r"data.jsonl, row 2: not valid JSON"):
        load_rows(str(path))


def test_parquet_rows_are_validated(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "pref.parquet"
    pq.write_table(
        pa.Table.from_pylist([GOOD["preference"], {**GOOD["preference"], "rejected": []}]), path
    )
    with pytest.raises(DataError, match=r"pref.parquet, row 2, field 'rejected'"):
        validate_rows(load_rows(str(path)), "preference", str(path))


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_rows(str(tmp_path / "nope.jsonl"))
    (tmp_path / "x.txt").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        load_rows(str(tmp_path / "x.txt"))


def test_sft_format_detection():
    assert detect_sft_format(GOOD["language_modeling"], "text") == "language_modeling"
    assert detect_sft_format({"prompt": "a", "completion": "b"}, "text") == "prompt_completion"
    assert detect_sft_format({"body": "raw"}, "body") == "text"
    with pytest.raises(DataError, match="cannot tell the SFT format"):
        detect_sft_format({"foo": 1}, "text")


def test_atomic_writes_leave_the_old_file_or_the_new_one(tmp_path, monkeypatch):
    import os

    from rayalign.data.io import read_jsonl, write_jsonl
    from rayalign.storage import write_atomic

    path = tmp_path / "sub" / "rows.jsonl"
    write_jsonl(path, [{"a": 1}, {"a": 2}])
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_atomic(path, "torn")
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert sorted(p.name for p in path.parent.iterdir()) == ["rows.jsonl"]
