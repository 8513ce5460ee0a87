"""RolloutPool: the elastic set of GenerationWorkers that samples a step's prompts.

The pool splits a batch into chunks and hands them out as a work queue, so it
can change size between chunks (`scale_to`), replace a worker that dies (its
chunk goes back on the queue, a replacement loads the current weights first), and
still return exactly one result set per prompt, in prompt order.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from actors.batches import PromptRequest, Sample, SamplingOptions

log = logging.getLogger(__name__)
WORKER_ERRORS = (RayActorError, ActorDiedError, ActorUnavailableError)


@dataclass
class PoolStats:
    """What happened during the last `generate` call."""

    chunks: int = 0
    retried_chunks: int = 0
    replaced_workers: int = 0
    samples_per_worker: dict[str, int] = field(default_factory=dict)


class RolloutPool:
    """Owns GenerationWorker actors; used by the RL driver.

    Args:
        make_worker: `make_worker(name) -> actor handle` builds a GenerationWorker
            with the initial policy (resources and engine options bound in).
        num_workers: initial pool size, anchors included.
        chunk_size: prompts per work item; smaller chunks rebalance and rescale sooner.
        target: optional `() -> int | None` polled between chunks (the run controller's
            requested size), so a running step can grow or shrink the pool.
        anchors: workers the pool samples with but does not own, by name: colocated
            learner ranks (`ColocatedWorker`). They are never removed, replaced or
            killed by the pool, and load new weights from their own learner
            (`sync_local`) instead of from the object store.
        source: learner rank 0 (a `WeightSender`). With it, every sync reaches the
            workers the pool owns over a weight-update group of rank 0 and those
            workers (`actors.weight_sync`), rebuilt when the membership changes; without
            it, or if a broadcast fails, they read rank 0's export from the object store.
            Workers that join between syncs load that export once.
    """

    def __init__(
        self,
        make_worker: Callable[[str], Any],
        num_workers: int = 1,
        chunk_size: int = 8,
        target: Callable[[], int | None] | None = None,
        anchors: dict[str, Any] | None = None,
        source: Any = None,
    ) -> None:
        self.anchors = dict(anchors or {})
        self._source = source
        self._plan: list | None = None
        self._group: tuple[str, ...] = ()  # owned workers in the current weight group
        self.sync_stats: dict[str, float] = {}
        if max(num_workers, len(self.anchors)) < 1:
            raise ValueError("a rollout pool needs at least one worker")
        self._make = make_worker
        self._names = (f"gen-{i}" for i in itertools.count())
        self.chunk_size = chunk_size
        self._target = target
        self.weights_ref: ray.ObjectRef | None = None
        self._export: Callable[[], ray.ObjectRef] | None = None
        self.weight_version = 0
        self.workers: dict[str, Any] = dict(self.anchors)
        self.stats = PoolStats()
        self._add(max(0, num_workers - len(self.anchors)))

    # -- membership -------------------------------------------------------
    def _add(self, count: int) -> None:
        if count <= 0:
            return
        new = {next(self._names): None for _ in range(count)}
        for name in new:
            new[name] = self._make(name)
        weights = self._current_weights()
        if weights is not None:  # a new worker takes the current policy before any work
            ray.get([w.load_weights.remote(weights, self.weight_version) for w in new.values()])
        else:
            ray.get([w.ping.remote() for w in new.values()])
        self.workers.update(new)

    def _current_weights(self) -> ray.ObjectRef | None:
        """The current policy's weights in the object store (exported on first need)."""
        if self.weights_ref is None and self._export is not None:
            self.weights_ref = self._export()
        return self.weights_ref

    def _remove(self, name: str) -> None:
        ray.kill(self.workers.pop(name), no_restart=True)

    def scale_to(self, n: int, busy: set[str] = frozenset()) -> None:
        """Grow or shrink to `n` workers (never below the anchors). Busy workers are
        removed last (idle ones first)."""
        if n < 1:
            raise ValueError("a rollout pool needs at least one worker")
        n = max(n, len(self.anchors))
        if n > len(self.workers):
            self._add(n - len(self.workers))
        while len(self.workers) > n:
            idle = [name for name in self.workers if name not in busy and name not in self.anchors]
            if not idle:
                break
            self._remove(idle[-1])

    @property
    def size(self) -> int:
        return len(self.workers)

    # -- weights ----------------------------------------------------------
    def load_weights(
        self, weights: dict | ray.ObjectRef | Callable[[], ray.ObjectRef], version: int
    ) -> None:
        """Push new policy weights to every worker.

        `weights` is a state dict, the ObjectRef of the learner's `export_weights` call
        (the workers then read the learner's copy and the tensors never pass through this
        process) or a function giving that ref, called only if some worker needs it:
        anchors load from their own learner in-process (`sync_local`), and with a
        `source` the owned workers receive its broadcast instead.
        A worker that died meanwhile is replaced; its replacement starts on these weights.
        """
        self._export = weights if callable(weights) else None
        if callable(weights):
            self.weights_ref = None
        else:
            self.weights_ref = weights if isinstance(weights, ray.ObjectRef) else ray.put(weights)
        self.weight_version = version
        self.sync_stats = {}
        refs = {name: w.sync_local.remote(version) for name, w in self.anchors.items()}
        owned = [name for name in self.workers if name not in self.anchors]
        if owned and self._source is not None and callable(weights):
            owned = self._broadcast(owned, version)  # those left need the object store
        refs.update(
            {
                name: self.workers[name].load_weights.remote(self._current_weights(), version)
                for name in owned
            }
        )
        for name, ref in refs.items():
            try:
                ray.get(ref)
            except WORKER_ERRORS as err:
                log.warning(
                    "generation worker %s died during a weight sync (%s); replacing it",
                    name,
                    type(err).__name__,
                )
                self._replace(name)

    def _broadcast(self, names: list[str], version: int) -> list[str]:
        """Send the source's weights to `names` over the weight group; returns the workers
        it did not reach (none, or all of them after a failure, which drops the group)."""
        refs: list[ray.ObjectRef] = []
        try:
            # A worker that died since the last sync would hold up the group's rendezvous.
            ray.get([self.workers[n].ping.remote() for n in names])
            if self._plan is None:
                self._plan = ray.get(self._source.weight_plan.remote())
            if self._group != tuple(names):
                self._open_group(names)
            refs = [self._source.broadcast_weights.remote(self._plan)]
            refs += [self.workers[n].receive_weights.remote(version) for n in names]
            sent, *received = ray.get(refs)
        except Exception as err:  # noqa: BLE001 - any failure falls back to the object store
            log.warning("weight broadcast failed (%s); using the object store", err)
            self._drop_group(refs)
            return names
        self.sync_stats = {
            **sent,
            "receive_s": max(r["receive_s"] for r in received),
            "load_s": max(r["load_s"] for r in received),
        }
        return []

    def _open_group(self, names: list[str]) -> None:
        self._group = ()
        group = ray.get(self._source.open_weight_group.remote(len(names) + 1))
        ray.get(
            [self._source.join_weight_group.remote(group)]
            + [
                self.workers[n].join_weight_group.remote(group, rank, self._plan)
                for rank, n in enumerate(names, start=1)
            ]
        )
        self._group = tuple(names)

    def _drop_group(self, pending: list[ray.ObjectRef]) -> None:
        """Close rank 0's end (peers blocked in the group's collectives then fail at once)
        and wait for the calls of the failed broadcast to end."""
        self._group = ()
        with contextlib.suppress(*WORKER_ERRORS):
            ray.get(self._source.close_weight_group.remote())
        ray.wait(pending, num_returns=len(pending), timeout=60)

    # -- sampling ---------------------------------------------------------
    def generate(
        self, requests: list[PromptRequest], sampling: SamplingOptions
    ) -> list[list[Sample]]:
        """Samples for every request, `result[i]` holding the n samples of `requests[i]`."""
        queue = deque(
            requests[i : i + self.chunk_size] for i in range(0, len(requests), self.chunk_size)
        )
        results: dict[int, list[Sample]] = {}
        inflight: dict[ray.ObjectRef, tuple[str, list[PromptRequest]]] = {}
        self.stats = PoolStats(chunks=len(queue))
        while queue or inflight:
            self._apply_target(busy={name for name, _ in inflight.values()})
            busy = {name for name, _ in inflight.values()}
            for name in [n for n in self.workers if n not in busy]:
                if not queue:
                    break
                chunk = queue.popleft()
                inflight[self.workers[name].generate.remote(chunk, sampling)] = (name, chunk)
            done, _ = ray.wait(list(inflight), num_returns=1)
            name, chunk = inflight.pop(done[0])
            try:
                samples = ray.get(done[0])
            except WORKER_ERRORS as err:
                log.warning(
                    "generation worker %s died (%s); re-queueing %d prompts",
                    name,
                    type(err).__name__,
                    len(chunk),
                )
                queue.appendleft(chunk)
                self.stats.retried_chunks += 1
                self._replace(name)
                continue
            for s in samples:
                results.setdefault(s.index, []).append(s)
            self.stats.samples_per_worker[name] = self.stats.samples_per_worker.get(name, 0) + len(
                samples
            )
        return [results[r.index] for r in requests]

    def _replace(self, name: str) -> None:
        if name in self.anchors:
            raise RuntimeError(
                f"colocated worker {name} died: it held a learner rank, so the run stops here "
                "(resume from its last checkpoint)"
            )
        self.workers.pop(name, None)
        self.stats.replaced_workers += 1
        self._add(1)

    def _apply_target(self, busy: set[str]) -> None:
        if self._target is None:
            return
        wanted = self._target()
        if wanted and wanted != len(self.workers):
            log.info("scaling rollout pool %d -> %d", len(self.workers), wanted)
            self.scale_to(wanted, busy)

    def shutdown(self) -> None:
        """Kill the workers the pool owns (anchors belong to the run's learners)."""
        for name in [n for n in self.workers if n not in self.anchors]:
            self._remove(name)
