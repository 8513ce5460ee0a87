"""Ray Train operations: data parallelism, a killed worker, merging with the start.

An interrupted driver and its rerun are tested where a user meets them: the pipeline
runner's stages with their storage in a bucket (tests/e2e/test_pipeline_run.py: epochs,
logs and TensorBoard each step once)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import (
    cluster_processes,
    stage_config,
)

pytestmark = pytest.mark.slow


def _tiny_sft(model, data, runs_dir, name, *extra):
    return stage_config(
        "sft",
        [
            f"model.name_or_path={model}",
            f"data.train={data / 'sft_train.jsonl'}",
            "data.eval=null",
            "data.prompts_eval=null",
            "data.preference_eval=null",
            f"run.storage_path={runs_dir}",
            f"run.name={name}",
            *extra,
        ],
    )


def _losses(entry) -> list[float]:
    state = json.loads((Path(entry.path) / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


def _attempts(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "attempts.jsonl").read_text().splitlines()]


def test_two_workers_match_one_worker_curve(ray_local, tiny_model, arithmetic_data, runs_dir):
    curves = {}
    for workers in (1, 2):
        stage, config = _tiny_sft(
            tiny_model,
            arithmetic_data,
            runs_dir,
            f"dp{workers}",
            f"resources.num_workers={workers}",
            "resources.cpus_per_worker=1",
            "training.max_steps=40",
            "training.logging_steps=5",
            "training.save_steps=40",
            "training.global_batch_size=32",
        )
        curves[workers] = _losses(stage.run(config))
        assert _attempts(config.run_dir)[-1]["world_size"] == workers
    one, two = curves[1], curves[2]
    print("1 worker:", [round(x, 3) for x in one], "\n2 workers:", [round(x, 3) for x in two])
    assert len(one) == len(two) == 8
    assert one[-1] < 0.8 * one[0] and two[-1] < 0.8 * two[0]
    rel = [abs(a - b) / a for a, b in zip(one, two, strict=True)]
    assert max(rel) < 0.1


def _train_worker_pids() -> list[int]:
    return [p.pid for p in cluster_processes("RayTrainWorker")]


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _committed_checkpoint(run_dir: Path) -> str | None:
    """The latest checkpoint Ray Train has registered (its checkpoint manager snapshot)."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    try:
        latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
    except (OSError, ValueError):
        return None
    return json.dumps(latest) if latest else None


def test_killed_worker_resumes_from_last_checkpoint(
    ray_local, tiny_model, arithmetic_data, runs_dir
):
    stage, config = _tiny_sft(
        tiny_model,
        arithmetic_data,
        runs_dir,
        "failover",
        "resources.num_workers=2",
        "resources.cpus_per_worker=1",
        "training.max_steps=200",
        "training.save_steps=20",
        "training.max_failures=2",
    )
    result = {}
    thread = threading.Thread(target=lambda: result.update(entry=stage.run(config)))
    thread.start()
    # A checkpoint directory appears before Ray Train commits it; a kill in between rightly
    # restarts from step 0. Wait until the controller's snapshot names a committed one.
    _wait_for(lambda: _committed_checkpoint(config.run_dir), 300, "the first committed checkpoint")
    victims = _train_worker_pids()
    assert victims, "no Ray Train worker process found"
    os.kill(victims[-1], signal.SIGKILL)
    thread.join(timeout=600)
    assert result["entry"].step == 200
    attempts = _attempts(config.run_dir)
    assert len(attempts) == 2 and attempts[0]["start_step"] == 0
    assert attempts[1]["start_step"] >= 20 and attempts[1]["start_step"] % 20 == 0


def test_merge_with_start_interpolates_the_final_checkpoint_once(
    ray_local, tiny_model, arithmetic_data, runs_dir
):
    """`training.merge_with_start=0.5`: the final checkpoint is the mean of the trained
    weights (the last step checkpoint holds them unmerged) and the start; a rerun of the
    finished run trains no step more and does not merge again (it measures and registers
    the final checkpoint as it is)."""
    import torch
    from safetensors.torch import load_file

    stage, config = _tiny_sft(
        tiny_model,
        arithmetic_data,
        runs_dir,
        "merged",
        "training.max_steps=20",
        "training.save_steps=20",
        "training.learning_rate=2.0e-3",
        "training.merge_with_start=0.5",
    )
    entry = stage.run(config)
    weights = "model.safetensors"
    final = load_file(str(Path(entry.path) / weights))
    trained = load_file(str(config.run_dir / "checkpoint-000020" / weights))
    start = load_file(str(tiny_model / weights))
    assert final.keys() == trained.keys() == start.keys()
    moved = 0.0
    for name, value in final.items():
        expected = 0.5 * trained[name] + 0.5 * start[name]
        assert (value - expected).abs().max().item() < 1e-6, name
        moved = max(moved, (trained[name] - start[name]).abs().max().item())
    assert moved > 1e-3  # training changed the weights, so the mean differs from both

    again = stage.run(config)
    assert again.step == 20
    rerun = load_file(str(Path(again.path) / weights))
    assert all(torch.equal(rerun[name], final[name]) for name in final)
