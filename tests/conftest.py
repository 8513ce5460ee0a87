"""Session fixtures: a local Ray cluster, the tiny model and the arithmetic task data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random `tiny` preset model directory, built once per session."""
    from pipelines.model_factory import init_model

    return init_model("tiny", tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="session")
def arithmetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Arithmetic task splits (small), built once per session."""
    from pipelines.tasks import build_task
    from pipelines.tasks.splits import write_task_data

    out = tmp_path_factory.mktemp("data") / "arithmetic"
    write_task_data(build_task("arithmetic"), out, seed=0, n_train=400, n_test=50)
    return out


@pytest.fixture(scope="session")
def ray_local():
    """A private local Ray cluster (never a stray one), shut down at the end."""
    import ray

    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
