"""Learner-to-engine weight sync against model size, by transport and phase, next to the
machine's measured memory-copy bandwidth (the physical limit for moving the same bytes).

Transports, each from a learner actor holding the model to a vLLM engine:
- `colocated`: engine and learner in one process (placement colocated): export, then
  vLLM's in-place `reload_weights`.
- `collective`: learner rank 0 broadcasts buckets over a gloo group to a GenerationWorker
  actor (placement split): pack (flatten into buckets), send, receive, load.
- `object_store`: the learner's export through Ray's object store (the fallback, and what
  split placement did before): export + put, then get + load in the worker.

`transfer_fraction_of_memcpy` counts the moving of the bytes (pack + send for collective,
put + get for the object store); `sync_fraction_of_memcpy` the whole sync, vLLM's load
(which re-packs weights for its CPU kernels) included.

    python -m bench.weight_sync [--presets tiny,small,medium]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import ray
import torch

from actors.weight_sync import WeightSender
from bench.common import model_dir, timed, write

REPEATS = 3


def memcpy_bandwidth(nbytes: int) -> float:
    """Bytes per second of a plain tensor copy of `nbytes` (median of 5)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32).normal_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    seconds, _ = timed(lambda: dst.copy_(src), repeats=5)
    return nbytes / seconds


class Learner(WeightSender):
    """The learner's side of every transport, without the optimizer: the model's weights,
    and optionally an engine in the same process (colocated)."""

    def __init__(self, path: str, colocated: bool = False) -> None:
        from actors.generation_worker import GenerationWorker
        from rayalign.models.loading import load_causal_lm

        torch.set_num_threads(1)
        self.model = load_causal_lm(path)
        self.engine = GenerationWorker(path) if colocated else None

    def weights(self) -> dict[str, torch.Tensor]:
        from actors.weight_sync import export_weights

        return export_weights(self.model)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.weights().values())

    def export_ref(self) -> tuple[list[ray.ObjectRef], float]:
        t = time.perf_counter()
        ref = ray.put(self.weights())
        return [ref], time.perf_counter() - t

    def sync_local(self, version: int) -> dict[str, float]:
        t0 = time.perf_counter()
        named = list(self.weights().items())
        t1 = time.perf_counter()
        self.engine.load_received(named, version)
        return {"export_s": t1 - t0, "load_s": time.perf_counter() - t1}


def _median(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def colocated(path: str) -> dict[str, float]:
    learner = ray.remote(num_cpus=1)(Learner).remote(path, colocated=True)
    runs = [ray.get(learner.sync_local.remote(v)) for v in range(REPEATS + 1)][1:]
    ray.kill(learner)
    phases = _median(runs)
    return {**phases, "transfer_s": 0.0, "sync_s": sum(phases.values())}


def collective(path: str, learner, plan) -> dict[str, float]:
    from actors.generation_worker import remote_generation_worker

    worker = remote_generation_worker(num_cpus=1).remote(path)
    group = ray.get(learner.open_weight_group.remote(2))
    ray.get(
        [learner.join_weight_group.remote(group), worker.join_weight_group.remote(group, 1, plan)]
    )
    runs = []
    for version in range(REPEATS + 1):
        t = time.perf_counter()
        sent, got = ray.get(
            [learner.broadcast_weights.remote(plan), worker.receive_weights.remote(version)]
        )
        wall = time.perf_counter() - t
        runs.append({**{k: v for k, v in sent.items() if k != "bytes"}, **got, "sync_s": wall})
    ray.get(learner.close_weight_group.remote())
    ray.kill(worker)
    phases = _median(runs[1:])
    return {**phases, "transfer_s": phases["pack_s"] + phases["send_s"]}


def object_store(path: str, learner) -> dict[str, float]:
    @ray.remote(num_cpus=1)
    class Worker:
        def __init__(self) -> None:
            from actors.generation_worker import GenerationWorker

            self.engine = GenerationWorker(path)

        def load(self, refs: list[ray.ObjectRef], version: int) -> dict[str, float]:
            t0 = time.perf_counter()
            weights = ray.get(refs[0])  # the learner's copy, mapped from the object store
            t1 = time.perf_counter()
            self.engine.load_received(list(weights.items()), version)
            return {"get_s": t1 - t0, "load_s": time.perf_counter() - t1}

    worker = Worker.remote()
    runs = []
    for version in range(REPEATS + 1):
        t = time.perf_counter()
        refs, put_s = ray.get(learner.export_ref.remote())
        got = ray.get(worker.load.remote(refs, version))
        runs.append({"put_s": put_s, **got, "sync_s": time.perf_counter() - t})
    ray.kill(worker)
    phases = _median(runs[1:])
    return {**phases, "transfer_s": phases["put_s"] + phases["get_s"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", default="tiny,small,medium")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        for preset in args.presets.split(","):
            path = model_dir(preset)
            learner = ray.remote(num_cpus=1)(Learner).remote(path)
            nbytes = ray.get(learner.nbytes.remote())
            plan = ray.get(learner.weight_plan.remote())
            bandwidth = memcpy_bandwidth(nbytes)
            results = {
                "colocated": colocated(path),
                "collective": collective(path, learner, plan),
                "object_store": object_store(path, learner),
            }
            ray.kill(learner)
            for transport, phases in results.items():
                rows.append(
                    {
                        "preset": preset,
                        "transport": transport,
                        "bytes": nbytes,
                        **phases,
                        "memcpy_bytes_per_s": bandwidth,
                        "transfer_fraction_of_memcpy": (
                            nbytes / phases["transfer_s"] / bandwidth
                            if phases["transfer_s"]
                            else None
                        ),
                        "sync_fraction_of_memcpy": nbytes / phases["sync_s"] / bandwidth,
                    }
                )
                print(rows[-1], flush=True)
    finally:
        ray.shutdown()
    write("weight_sync", {"config": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
