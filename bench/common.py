"""Shared pieces of the benchmarks: a local cluster, models, prompts, result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def timed(fn, repeats: int = 3) -> tuple[float, object]:
    """Median seconds of `repeats` calls of fn() (after the caller's warm-up) and the last result."""
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def model_dir(preset: str) -> str:
    from rayalign.models.factory import init_model

    path = Path(tempfile.gettempdir()) / "rayalign-bench" / preset
    if not (path / "model.safetensors").exists():
        init_model(preset, path)
    return str(path)


def prompts(n: int) -> list[list[dict]]:
    import random

    from rayalign.data.tasks import build_task

    task, rng = build_task("arithmetic"), random.Random(0)
    return [[{"role": "user", "content": task.sample(rng).question}] for _ in range(n)]


def write(name: str, result: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    result = {"benchmark": name, "machine": machine(), **result}
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
