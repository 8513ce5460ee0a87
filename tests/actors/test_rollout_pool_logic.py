"""RolloutPool's Ray logic with light stand-in workers (no vLLM): prompt order, exactly-once
answers when a worker dies mid-batch or mid-sync, resizing 1 -> 2 -> 1 while sampling, and
weight syncs over a (real) weight group that follows the membership."""

from __future__ import annotations

import os
import time

import pytest
import ray
import torch

from actors.batches import PromptRequest, Sample, SamplingOptions
from actors.rollout_pool import RolloutPool
from actors.weight_sync import WeightReceiver, WeightSender

SAMPLING = SamplingOptions(n=2, max_tokens=3)


class StandInWorker:
    """What the pool calls on a GenerationWorker (`ping`, `load_weights`, `generate`),
    answering at once: each sample's text names its prompt, its worker and its call.

    Args:
        name: the worker's label on its samples.
        delay_s: seconds each `generate` call takes.
        die_on: exit the process on this `generate` call (1-based), as a crashed engine.
        die_on_load: exit the process on its first `load_weights` call.
    """

    def __init__(
        self, name: str, delay_s: float = 0.0, die_on: int | None = None, die_on_load=False
    ) -> None:
        self.name, self.delay_s, self.die_on, self.die_on_load = name, delay_s, die_on, die_on_load
        self.calls = 0
        self.weight_version = 0

    def ping(self) -> str:
        return self.name

    def load_weights(self, weights: dict, version: int) -> int:
        if self.die_on_load:
            os._exit(1)
        assert weights == {"w": version}  # the pool passes its one object-store copy
        self.weight_version = version
        return version

    def generate(self, requests: list[PromptRequest], sampling: SamplingOptions) -> list[Sample]:
        self.calls += 1
        if self.calls == self.die_on:
            os._exit(1)
        time.sleep(self.delay_s)
        return [
            Sample(
                index=r.index,
                prompt_ids=[r.index],
                completion_ids=[k] * sampling.max_tokens,
                logprobs=[-1.0] * sampling.max_tokens,
                text=f"{r.index}:{self.name}:{self.calls}",
                finish_reason="length",
                weight_version=self.weight_version,
                worker=self.name,
            )
            for r in requests
            for k in range(sampling.n)
        ]


RemoteStandIn = ray.remote(num_cpus=0, max_restarts=0)(StandInWorker)


class StandInColocated(StandInWorker):
    """A ColocatedWorker: loads new weights from its own learner (`sync_local`)."""

    def sync_local(self, version: int) -> int:
        self.weight_version = version
        return version


@ray.remote(num_cpus=0)
class Exporter:
    """A learner's `export_weights`, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.version = 0

    def set_version(self, version: int) -> None:
        self.version = version

    def export_weights(self) -> dict:
        self.calls += 1
        return {"w": self.version}

    def count(self) -> int:
        return self.calls


def factory(**by_name: dict):
    """`make_worker(name)` for the pool: a stand-in with the options given for that name."""
    return lambda name: RemoteStandIn.remote(name, **by_name.get(name, {}))


def _requests(n: int) -> list[PromptRequest]:
    return [PromptRequest(i, [{"role": "user", "content": f"q{i}"}]) for i in range(n)]


def _check_exactly_once(requests, results) -> None:
    assert len(results) == len(requests)
    for req, samples in zip(requests, results, strict=True):
        assert [s.index for s in samples] == [req.index] * SAMPLING.n
        # Both samples of a prompt come from one call of one worker: no chunk answered twice.
        assert len({s.text.split(":", 1)[1] for s in samples}) == 1


def test_results_come_in_prompt_order_when_chunks_finish_out_of_order(ray_local):
    # gen-0 takes its chunks slowly; gen-1 answers the later chunks before it finishes.
    make = factory(**{"gen-0": {"delay_s": 0.5}})
    pool = RolloutPool(make, num_workers=2, chunk_size=3)
    requests = _requests(17)  # a short last chunk
    results = pool.generate(requests, SAMPLING)
    _check_exactly_once(requests, results)
    assert pool.stats.chunks == 6 and pool.stats.retried_chunks == 0
    assert sum(pool.stats.samples_per_worker.values()) == 17 * SAMPLING.n
    assert pool.stats.samples_per_worker["gen-1"] > pool.stats.samples_per_worker["gen-0"]
    assert pool.generate([], SAMPLING) == []
    pool.shutdown()


def test_worker_dying_mid_batch_is_replaced_and_its_chunk_answered_once(ray_local):
    make = factory(**{"gen-1": {"die_on": 2, "delay_s": 0.05}, "gen-0": {"delay_s": 0.05}})
    pool = RolloutPool(make, num_workers=2, chunk_size=2)
    pool.load_weights({"w": 3}, version=3)
    requests = _requests(20)
    results = pool.generate(requests, SAMPLING)
    _check_exactly_once(requests, results)
    assert pool.stats.retried_chunks == 1 and pool.stats.replaced_workers == 1
    assert set(pool.workers) == {"gen-0", "gen-2"}
    workers = {s.worker for samples in results for s in samples}
    assert workers == {"gen-0", "gen-1", "gen-2"}  # gen-1 answered its first chunk only
    # The replacement took the current weights before its first chunk.
    assert {s.weight_version for samples in results for s in samples} == {3}
    pool.shutdown()


def test_worker_dying_during_a_weight_sync_is_replaced_on_the_new_weights(ray_local):
    make = factory(**{"gen-1": {"die_on_load": True}})
    pool = RolloutPool(make, num_workers=2, chunk_size=4)
    pool.load_weights({"w": 5}, version=5)
    assert set(pool.workers) == {"gen-0", "gen-2"}
    results = pool.generate(_requests(8), SAMPLING)
    assert {s.weight_version for samples in results for s in samples} == {5}
    pool.shutdown()


def test_pool_grows_and_shrinks_while_generating(ray_local):
    # The target is polled once per finished chunk: 2 workers from the 2nd poll, 1 from the 6th.
    plan = iter([None, 2, None, None, None, 1])
    sizes: list[int] = []

    def target():
        sizes.append(pool.size)
        return next(plan, None)

    make = factory(**{name: {"delay_s": 0.1} for name in ("gen-0", "gen-1")})
    pool = RolloutPool(make, num_workers=1, chunk_size=2, target=target)
    requests = _requests(24)
    results = pool.generate(requests, SAMPLING)
    _check_exactly_once(requests, results)
    assert {s.worker for samples in results for s in samples} == {"gen-0", "gen-1"}
    assert sizes[0] == 1 and 2 in sizes and sizes[-1] == 1
    assert pool.size == 1 and pool.stats.replaced_workers == 0
    # The worker removed was idle when the pool shrank: no chunk was lost or re-queued.
    assert pool.stats.retried_chunks == 0

    # Between steps: idle workers go first, busy ones stay; never fewer than one.
    (kept,) = pool.workers
    pool.scale_to(3)
    assert list(pool.workers) == [kept, "gen-2", "gen-3"]
    pool.scale_to(1, busy={"gen-3"})
    assert list(pool.workers) == ["gen-3"]
    with pytest.raises(ValueError, match="at least one worker"):
        pool.scale_to(0)
    pool.shutdown()
    assert pool.size == 0


def test_colocated_anchor_syncs_in_place_and_is_never_scaled_away(ray_local):
    anchor = ray.remote(num_cpus=0)(StandInColocated).remote("colocated-0")
    learner = Exporter.remote()
    pool = RolloutPool(factory(), num_workers=1, chunk_size=2, anchors={"colocated-0": anchor})
    assert list(pool.workers) == ["colocated-0"]  # the anchor counts as the one worker

    # Only the anchor: it loads from its own learner; nothing goes to the object store.
    ray.get(learner.set_version.remote(1))
    pool.load_weights(learner.export_weights.remote, version=1)
    assert ray.get(learner.count.remote()) == 0
    results = pool.generate(_requests(4), SAMPLING)
    assert {s.weight_version for samples in results for s in samples} == {1}

    # A worker added by scaling takes the current weights from one export.
    pool.scale_to(2)
    assert list(pool.workers) == ["colocated-0", "gen-0"] and ray.get(learner.count.remote()) == 1
    ray.get(learner.set_version.remote(2))
    pool.load_weights(learner.export_weights.remote, version=2)
    assert ray.get(learner.count.remote()) == 2
    results = pool.generate(_requests(8), SAMPLING)
    assert {s.worker for samples in results for s in samples} == {"colocated-0", "gen-0"}
    assert {s.weight_version for samples in results for s in samples} == {2}

    # Shrinking never removes the anchor, even when only it is idle; shutdown leaves it.
    pool.scale_to(1, busy={"gen-0"})
    assert list(pool.workers) == ["colocated-0", "gen-0"]
    pool.scale_to(1)
    assert list(pool.workers) == ["colocated-0"]
    pool.shutdown()
    assert ray.get(anchor.ping.remote()) == "colocated-0"


class Broadcaster(WeightSender):
    """Learner rank 0 as a weight-group source: weights `{"w": [v, v, v, v]}` at version v;
    counts its object-store exports."""

    def __init__(self) -> None:
        self.version, self.exports = 0, 0

    def set_version(self, version: int) -> None:
        self.version = version

    def weights(self) -> dict:
        return {"w": torch.full((4,), float(self.version))}

    def export_weights(self) -> dict:
        self.exports += 1
        return self.weights()

    def count(self) -> int:
        return self.exports


class GroupStandIn(StandInWorker, WeightReceiver):
    """A stand-in that joins weight groups (the real transport) and counts how each sync
    arrived: broadcast or object store."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.by = {"broadcast": 0, "object_store": 0}

    def load_received(self, named: list, version: int) -> None:
        ((name, tensor),) = named
        assert name == "w" and torch.equal(tensor, torch.full((4,), float(version)))
        self.weight_version = version
        self.by["broadcast"] += 1

    def load_weights(self, weights: dict, version: int) -> int:
        self.load_received(list(weights.items()), version)
        self.by["broadcast"] -= 1
        self.by["object_store"] += 1
        return version

    def arrivals(self) -> dict:
        return dict(self.by)


def test_syncs_broadcast_over_a_group_rebuilt_when_membership_changes(ray_local):
    source = ray.remote(num_cpus=0)(Broadcaster).remote()
    cls = ray.remote(num_cpus=0, max_restarts=0)(GroupStandIn)
    pool = RolloutPool(cls.remote, num_workers=2, chunk_size=2, source=source)

    def sync(version: int) -> None:
        ray.get(source.set_version.remote(version))
        pool.load_weights(source.export_weights.remote, version)

    def arrivals() -> dict[str, dict]:
        return {n: ray.get(w.arrivals.remote()) for n, w in pool.workers.items()}

    sync(1)
    assert ray.get(source.count.remote()) == 0  # nothing went through the object store
    assert pool.sync_stats["bytes"] == 16
    assert {s.weight_version for g in pool.generate(_requests(6), SAMPLING) for s in g} == {1}

    # A worker added between syncs loads one export; the next sync rebuilds the group.
    pool.scale_to(3)
    assert ray.get(source.count.remote()) == 1
    sync(2)
    assert arrivals() == {
        "gen-0": {"broadcast": 2, "object_store": 0},
        "gen-1": {"broadcast": 2, "object_store": 0},
        "gen-2": {"broadcast": 1, "object_store": 1},
    }

    # A worker dead by the next sync: that sync goes through the object store and
    # replaces it; the one after broadcasts again, to the new membership.
    ray.kill(pool.workers["gen-1"], no_restart=True)
    sync(3)
    assert set(pool.workers) == {"gen-0", "gen-2", "gen-3"} and pool.sync_stats == {}
    sync(4)
    assert pool.sync_stats["bytes"] == 16
    assert arrivals() == {
        "gen-0": {"broadcast": 3, "object_store": 1},
        "gen-2": {"broadcast": 2, "object_store": 2},
        "gen-3": {"broadcast": 1, "object_store": 1},
    }
    results = pool.generate(_requests(12), SAMPLING)
    assert {s.weight_version for g in results for s in g} == {4}
    pool.shutdown()
