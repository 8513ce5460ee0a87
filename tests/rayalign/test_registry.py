"""The run registry under concurrent writers: several processes registering at once lose
no entry, and every read in between sees a whole, valid file."""

from __future__ import annotations

import json
import multiprocessing

from rayalign.registry import DatasetEntry, Registry, RegistryEntry

PROCESSES = 4
CALLS = 20


def _writer(root: str, proc: int, start) -> None:
    """Register CALLS checkpoints (and a dataset every 5th call), reading back in between."""
    registry = Registry(root)
    start.wait()  # all writers begin together
    for k in range(CALLS):
        registry.register(RegistryEntry(f"p{proc}-{k}", "sft", "chat", f"/ckpt/{proc}/{k}", step=k))
        if k % 5 == 4:
            registry.register_dataset(DatasetEntry(f"d{proc}-{k}", "rlaif", "preference", "/d"))
        mine = {n for n in registry.entries() if n.startswith(f"p{proc}-")}
        assert mine == {f"p{proc}-{i}" for i in range(k + 1)}  # nothing of ours lost so far


def test_concurrent_processes_lose_no_entry(tmp_path):
    ctx = multiprocessing.get_context("spawn")  # no forked copy of the test runner's state
    start = ctx.Barrier(PROCESSES)
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), p, start)) for p in range(PROCESSES)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * PROCESSES

    body = json.loads((tmp_path / "registry.json").read_text())  # valid JSON
    assert len(body["checkpoints"]) == PROCESSES * CALLS
    assert len(body["datasets"]) == PROCESSES * CALLS // 5
    entries = Registry(tmp_path).entries()
    assert entries["p3-19"] == RegistryEntry(
        "p3-19", "sft", "chat", "/ckpt/3/19", step=19, created=entries["p3-19"].created
    )
    # Only the file and its lock remain: no temporary file left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["registry.json", "registry.json.lock"]


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
