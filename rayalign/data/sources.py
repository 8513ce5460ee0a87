"""Where stage data comes from: a hub dataset, or a local file or directory in any form
`datasets` reads, with a subset, a split and a column mapping.

A source is a path or name, or a mapping:

    train: HuggingFaceH4/ultrafeedback_binarized          # the train split
    eval: {path: HuggingFaceH4/ultrafeedback_binarized, split: test_prefs}
    prompts: {path: data/gsm8k, columns: {question: prompt, answer: ground_truth}}

- `.jsonl`/`.json` files are read by `read_jsonl` (errors name the line); `.parquet`,
  `.csv` and `.arrow` files by `datasets`.
- A directory written by `save_to_disk` (a `Dataset` or a `DatasetDict`) is read with
  `load_from_disk`; any other directory, and any hub name, with `load_dataset`, which
  reads a hub-style layout (`data/train-*.parquet`, a README's `configs:`) the same way
  from a local folder as from the hub.
- Training data default to split `train`, held-out data to `test`; a split that the
  dataset lacks is an error that lists the splits it has (never a silent fallback).

Nothing here reads every row into a list: a `datasets.Dataset` is memory-mapped Arrow,
and callers iterate it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rayalign.config import TRAIN_SPLIT, DatasetSource, Source
from rayalign.data.io import DataError, read_jsonl
from rayalign.storage import is_uri, local_copy

_DATASETS_FILES = {".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
_FILE_SUFFIXES = {".jsonl", ".json", *_DATASETS_FILES}


def as_source(value: Source | Path) -> DatasetSource:
    """`value` as a `DatasetSource` (a string or a `Path` is its `path`)."""
    return value if isinstance(value, DatasetSource) else DatasetSource(path=str(value))


def resolve_source(value: Source | None) -> Source | None:
    """`value` with an existing local path made absolute (Ray workers start elsewhere)."""
    if value is None:
        return None
    source = as_source(value)
    if not Path(source.path).exists():
        return value
    absolute = str(Path(source.path).resolve())
    if isinstance(value, DatasetSource):
        return source.model_copy(update={"path": absolute})
    return absolute


def as_json(value: Source | None) -> str | dict | None:
    """`value` as JSON can hold it (journals and settings that a rerun compares)."""
    return value.model_dump(exclude_defaults=True) if isinstance(value, DatasetSource) else value


def describe(value: Source, default_split: str = TRAIN_SPLIT) -> str:
    """How errors name a source: the path, then its subset and split when they matter."""
    source = as_source(value)
    path = Path(source.path)
    if path.is_file():
        return source.path
    subset = f", subset {source.subset!r}" if source.subset else ""
    return f"{source.path} (split {source.split or default_split!r}{subset})"


def _splits_error(where: str, split: str, available: Sequence[str]) -> DataError:
    return DataError(f"{where}: no split {split!r}; the dataset has {sorted(available)}")


def _load_from_disk(source: DatasetSource, split: str, explicit_split: bool):
    from datasets import DatasetDict, load_from_disk

    where = describe(source, split)
    data = load_from_disk(source.path)
    if isinstance(data, DatasetDict):
        if split not in data:
            raise _splits_error(where, split, list(data))
        return data[split]
    if explicit_split:
        raise DataError(
            f"{source.path}: a single saved dataset has no splits; drop split {split!r} "
            "or save a DatasetDict"
        )
    return data


def _local_cache_dir(folder: Path) -> str:
    """A `datasets` cache directory of its own for a local folder, keyed by its files.

    `datasets` 5.x keys a folder whose README lists `configs:` by the folder's name and the
    file patterns alone: two folders named alike (or one whose files changed) would read
    each other's cached Arrow tables.
    """
    import hashlib

    from datasets import config

    digest = hashlib.sha256(str(folder.resolve()).encode())
    for file in sorted(folder.rglob("*")):
        if file.is_file():
            stat = file.stat()
            digest.update(f"{file}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return str(Path(config.HF_DATASETS_CACHE) / "rayalign-local" / digest.hexdigest()[:16])


def _load_dataset(source: DatasetSource, split: str):
    from datasets import load_dataset

    where = describe(source, split)
    path = Path(source.path)
    kind = _DATASETS_FILES.get(path.suffix) if path.is_file() else None
    try:
        if kind:
            return load_dataset(kind, data_files=str(path), split=TRAIN_SPLIT)
        return load_dataset(
            source.path,
            name=source.subset,
            split=split,
            revision=source.revision,
            cache_dir=_local_cache_dir(path) if path.is_dir() else None,
        )
    except ValueError as err:  # an unknown split or subset: the message lists the known ones
        raise DataError(f"{where}: {err}") from None
    except Exception as err:  # the hub client raises many types; the user needs the name
        if path.exists():
            raise DataError(f"{where}: not readable by `datasets` ({err})") from None
        raise DataError(
            f"{where}: not a local file or directory and not a loadable HF dataset ({err})"
        ) from None


def _rename(rows: Any, columns: dict[str, str], names: Sequence[str], where: str) -> Any:
    for old, new in columns.items():
        if old not in names:
            raise DataError(
                f"{where}: data.columns maps {old!r}, but the dataset has no such column "
                f"(columns: {sorted(names)})"
            )
        if new in names and new not in columns:
            raise DataError(
                f"{where}: data.columns maps {old!r} to {new!r}, which the dataset already "
                f"has; map {new!r} elsewhere too, or drop it"
            )
    if isinstance(rows, list):
        return [{columns.get(k, k): v for k, v in row.items()} for row in rows]
    return rows.rename_columns(columns)


def open_rows(value: Source, default_split: str = TRAIN_SPLIT):
    """The rows of `value`: a list of dicts for a JSON-lines file, a `datasets.Dataset`
    otherwise (memory-mapped; it indexes and iterates like the list). Columns are renamed
    as the source maps them.

    Raises:
        DataError: naming the source, its split and what is wrong.
    """
    source = as_source(value)
    split = source.split or default_split
    if is_uri(source.path):  # object storage: read this node's copy of it
        try:
            source = source.model_copy(update={"path": local_copy(source.path)})
        except FileNotFoundError as e:
            raise DataError(str(e)) from None
    path = Path(source.path)
    looks_local = path.suffix in _FILE_SUFFIXES or source.path.startswith(("/", ".", "~"))
    if looks_local and not path.exists():
        raise DataError(f"{source.path}: file does not exist")
    if path.is_file() and path.suffix in {".jsonl", ".json"}:
        rows: Any = read_jsonl(path)
        names = sorted({k for row in rows for k in row})
    elif path.is_file() and path.suffix not in _DATASETS_FILES:
        raise DataError(
            f"{path}: unsupported file type {path.suffix!r}; use .jsonl, .json, .parquet, "
            ".csv, .arrow or a dataset directory"
        )
    else:
        is_saved = path.is_dir() and any(
            (path / name).is_file() for name in ("dataset_dict.json", "state.json")
        )
        rows = (
            _load_from_disk(source, split, source.split is not None)
            if is_saved
            else _load_dataset(source, split)
        )
        names = rows.column_names
        if len(rows) == 0:
            raise DataError(f"{describe(source, split)}: no rows")
    return _rename(rows, source.columns, names, describe(source, split)) if source.columns else rows


def to_dataset(rows: Any):
    """A `datasets.Dataset` of `rows` (a list, or already a Dataset)."""
    from datasets import Dataset

    return rows if isinstance(rows, Dataset) else Dataset.from_list(rows)
