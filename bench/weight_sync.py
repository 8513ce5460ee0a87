"""Learner-to-worker weight-sync latency against model size, next to the machine's
measured memory-copy bandwidth (the physical limit for moving the same bytes).

    python -m bench.weight_sync [--presets tiny,small,medium]
"""

from __future__ import annotations

import argparse
import os

import ray
import torch

from bench.common import model_dir, timed, write


def memcpy_bandwidth(nbytes: int) -> float:
    """Bytes per second of a plain tensor copy of `nbytes` (median of 5)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32).normal_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    seconds, _ = timed(lambda: dst.copy_(src), repeats=5)
    return nbytes / seconds


def sync_seconds(path: str) -> tuple[float, int]:
    from actors.generation_worker import remote_generation_worker
    from actors.weight_sync import export_weights
    from rayalign.models.loading import load_causal_lm

    weights = export_weights(load_causal_lm(path))
    nbytes = sum(t.numel() * t.element_size() for t in weights.values())
    worker = remote_generation_worker(num_cpus=1).remote(path)
    ray.get(worker.ping.remote())
    version = iter(range(1, 100))

    def sync():
        # What RolloutPool.load_weights does: one object-store copy, loaded in place.
        ray.get(worker.load_weights.remote(ray.put(weights), next(version)))

    sync()  # warm-up
    seconds, _ = timed(sync)
    ray.kill(worker)
    return seconds, nbytes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", default="tiny,small,medium")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        for preset in args.presets.split(","):
            seconds, nbytes = sync_seconds(model_dir(preset))
            bandwidth = memcpy_bandwidth(nbytes)
            rows.append(
                {
                    "preset": preset,
                    "bytes": nbytes,
                    "sync_seconds": seconds,
                    "sync_bytes_per_s": nbytes / seconds,
                    "memcpy_bytes_per_s": bandwidth,
                    "fraction_of_memcpy": (nbytes / seconds) / bandwidth,
                }
            )
            print(rows[-1], flush=True)
    finally:
        ray.shutdown()
    write("weight_sync", {"config": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
