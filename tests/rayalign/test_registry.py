"""The run registry under concurrent writers, on a local folder and in object storage (a
local S3 server): several processes registering at once lose no entry, every read in
between sees whole entries, and a legacy registry.json moves into the per-entry layout."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from rayalign import storage
from rayalign.registry import DatasetEntry, Registry, RegistryEntry
from tests.s3_server import s3_server

PROCESSES = 4
# Each call reads the whole registry back: a request per entry against the S3 server.
CALLS = {"local": 20, "s3": 10}


@pytest.fixture(scope="module")
def s3():
    with s3_server() as env:
        yield env


def _writer(root: str, proc: int, start, calls: int) -> None:
    """Register `calls` checkpoints (and a dataset every 5th call), reading back in between."""
    registry = Registry(root)
    start.wait()  # all writers begin together
    for k in range(calls):
        registry.register(RegistryEntry(f"p{proc}-{k}", "sft", "chat", f"/ckpt/{proc}/{k}", step=k))
        if k % 5 == 4:
            registry.register_dataset(DatasetEntry(f"d{proc}-{k}", "rlaif", "preference", "/d"))
        mine = {n for n in registry.entries() if n.startswith(f"p{proc}-")}
        assert mine == {f"p{proc}-{i}" for i in range(k + 1)}  # nothing of ours lost so far


def _write_concurrently(root: str, calls: int) -> None:
    ctx = multiprocessing.get_context("spawn")  # no forked copy of the test runner's state
    start = ctx.Barrier(PROCESSES)
    procs = [ctx.Process(target=_writer, args=(root, p, start, calls)) for p in range(PROCESSES)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * PROCESSES


@pytest.mark.parametrize("where", ["local", "s3"])
def test_concurrent_processes_lose_no_entry(where, tmp_path, request):
    root, calls = str(tmp_path), CALLS[where]
    if where == "s3":
        request.getfixturevalue("s3")
        root = f"s3://rayalign/{tmp_path.name}"
    _write_concurrently(root, calls)

    folder = storage.join(root, "registry", "checkpoints")
    files = storage.list_names(folder)
    # One whole JSON object per entry, and nothing else (no temporary file left behind).
    assert len(files) == PROCESSES * calls and all(f.endswith(".json") for f in files)
    assert all(json.loads(storage.read_text(storage.join(folder, f))) for f in files)
    registry = Registry(root)
    entries = registry.entries()
    assert len(entries) == PROCESSES * calls
    assert len(registry.datasets()) == PROCESSES * (calls // 5)
    last = f"p3-{calls - 1}"
    assert entries[last] == RegistryEntry(
        last, "sft", "chat", f"/ckpt/3/{calls - 1}", step=calls - 1, created=entries[last].created
    )


def test_register_replace_remove_and_datasets_keep_each_other(tmp_path):
    registry = Registry(tmp_path)
    assert registry.entries() == {} and registry.get("sft") is None
    registry.register(RegistryEntry("sft", "sft", "chat", "/a"))
    registry.register_dataset(DatasetEntry("pairs", "rlaif", "preference", "/p", rows=3))
    registry.register(RegistryEntry("sft", "sft", "chat", "/b"))  # re-registered: replaced
    assert registry.get("sft").path == "/b"
    assert registry.datasets()["pairs"].rows == 3  # checkpoint writes keep the datasets
    assert registry.remove("sft") is True and registry.remove("sft") is False
    assert registry.entries() == {} and set(registry.datasets()) == {"pairs"}


def test_a_legacy_registry_file_is_read_then_moved_into_the_layout(tmp_path):
    old = {
        "checkpoints": {"sft": {"name": "sft", "stage": "sft", "kind": "chat", "path": "/s"}},
        "datasets": {"pairs": {"name": "pairs", "stage": "rlaif", "format": "p", "path": "/p"}},
    }
    (tmp_path / "registry.json").write_text(json.dumps(old))
    registry = Registry(tmp_path)
    assert registry.get("sft").path == "/s" and set(registry.datasets()) == {"pairs"}
    registry.register(RegistryEntry("dpo", "dpo", "chat", "/d"))  # the first write migrates
    assert not (tmp_path / "registry.json").exists()
    assert set(Registry(tmp_path).entries()) == {"sft", "dpo"}
    assert set(Registry(tmp_path).datasets()) == {"pairs"}
    assert registry.remove("sft") and set(registry.entries()) == {"dpo"}


def test_object_storage_paths_and_node_local_copies(s3, tmp_path, monkeypatch):
    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "cache"))
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "sub" / "weights.bin").write_bytes(b"\0" * 1000)
    uri = "s3://rayalign/copies/model"
    storage.upload(model, uri)
    assert storage.exists(storage.join(uri, "sub", "weights.bin"))
    copy = Path(storage.local_copy(uri))
    assert copy.name == "model" and (copy / "sub" / "weights.bin").read_bytes() == b"\0" * 1000
    assert storage.local_copy(uri) == str(copy)  # the same content: the same copy
    storage.write_text(storage.join(uri, "config.json"), '{"changed": true}')
    changed = Path(storage.local_copy(uri))  # a changed object: a new copy
    assert changed != copy and json.loads((changed / "config.json").read_text()) == {
        "changed": True
    }
    assert Path(storage.local_copy(storage.join(uri, "config.json"))).read_text() != "{}"
    with pytest.raises(FileNotFoundError, match="s3://rayalign/copies/nothing"):
        storage.local_copy("s3://rayalign/copies/nothing")
    assert storage.local_copy(str(model)) == str(model)  # a local path is its own copy
    storage.append_text("s3://rayalign/copies/log.jsonl", "a\n")
    storage.append_text("s3://rayalign/copies/log.jsonl", "b\n")
    assert storage.read_text("s3://rayalign/copies/log.jsonl") == "a\nb\n"
