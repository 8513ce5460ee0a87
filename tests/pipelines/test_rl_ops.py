"""RL run operations on the tiny model: scaling while running, a killed generation
worker, an interrupted driver resubmitted."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from rayalign.config import load_config
from rayalign.rl_config import PPOStageConfig
from tests.conftest import cluster_processes, run_cli_driver, start_cli_driver, tensorboard_steps

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
MECHANICS = [
    "rl.steps=6",
    "rl.prompts_per_step=8",
    "rl.group_size=2",
    "rl.max_new_tokens=4",
    "rl.eval_steps=100",
    "rl.save_steps=2",
    "rollout.chunk_size=2",
    "rollout.cpus_per_worker=0.5",
]


def _overrides(model, data, runs, name):
    return [
        f"model.name_or_path={model}",
        f"data.prompts={data / 'prompts_train.jsonl'}",
        "data.prompts_eval=null",
        f"run.storage_path={runs}",
        f"run.name={name}",
        *MECHANICS,
    ]


def _config(model, data, runs, name, *extra: str) -> PPOStageConfig:
    return load_config(
        PPOStageConfig,
        ROOT / "configs/tiny/grpo.yaml",
        [*_overrides(model, data, runs, name), *extra],
    )


def _rows(config) -> list[dict]:
    path = config.run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _wait_for_row(config, pred, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(pred(r) for r in _rows(config)):
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} never came")


def _wait_for_step(config, step: int, timeout: float = 300) -> None:
    _wait_for_row(config, lambda r: r["step"] >= step, f"step {step}", timeout)


def _run_in_thread(config):
    from pipelines.ppo import run_rl

    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(entry=run_rl(config)))
    thread.start()
    return thread, out


def _registered(stdout: str) -> dict:
    return json.loads(
        next(x for x in reversed(stdout.splitlines()) if x.startswith('{"registered"'))
    )


def _every_prompt_answered_once(config, rows):
    assert [r["step"] for r in rows] == list(range(1, config.rl.steps + 1))
    assert all(r["samples"] == config.rl.prompts_per_step * config.rl.group_size for r in rows)


# Split placement scales 1 -> 2 -> 1 across nodes in tests/e2e/test_multinode.py.
@pytest.mark.parametrize("placement", ["colocated"])
def test_scale_1_2_1_while_running(ray_local, tiny_model, arithmetic_data, runs_dir, placement):
    import ray

    from actors.run_controller import find_controller

    # Steps take a fraction of a second here while a new vLLM worker takes ~10 s to start,
    # so scale down only once a step has really run on two workers; 16 steps leave room.
    # Colocated, the learner's own engine is the first worker and a split one joins it.
    name = f"scale-{placement}"
    config = _config(
        tiny_model, arithmetic_data, runs_dir, name, "rl.steps=16", f"placement={placement}"
    )
    thread, out = _run_in_thread(config)
    _wait_for_step(config, 1)
    controller = find_controller(name)
    ray.get(controller.set_rollout_workers.remote(2))
    _wait_for_row(config, lambda r: r["rollout_workers_used"] == 2, "a step on two workers")
    ray.get(controller.set_rollout_workers.remote(1))
    thread.join(timeout=600)
    rows = _rows(config)
    used = [r["rollout_workers_used"] for r in rows]
    print("rollout workers per step:", used)
    assert used[0] == 1.0 and 2.0 in used and used[-1] == 1.0
    assert rows[-1]["rollout_workers"] == 1.0
    _every_prompt_answered_once(config, rows)
    assert out["entry"].step == config.rl.steps


@pytest.mark.parametrize("placement", ["colocated", "split"])
def test_killed_generation_worker_mid_run(
    ray_local, tiny_model, arithmetic_data, runs_dir, placement
):
    # Two workers: colocated, the split one beside the learner's engine is the victim.
    config = _config(
        tiny_model,
        arithmetic_data,
        runs_dir,
        f"genkill-{placement}",
        f"placement={placement}",
        "rollout.num_workers=2",
    )
    thread, out = _run_in_thread(config)
    _wait_for_step(config, 2)
    victims = cluster_processes("GenerationWorker")
    assert victims
    victims[0].kill()
    thread.join(timeout=600)
    _every_prompt_answered_once(config, _rows(config))
    assert out["entry"].step == 6


def test_sigterm_then_rerun_replays_the_uninterrupted_run(
    ray_local, tiny_model, arithmetic_data, runs_dir
):
    import torch
    from safetensors.torch import load_file

    from pipelines.ppo import run_rl

    extra = ["rl.steps=8", f"data.prompts_eval={arithmetic_data / 'prompts_test.jsonl'}"]
    extra += ["rl.eval_steps=3", "rl.eval_samples=1"]
    config = _config(tiny_model, arithmetic_data, runs_dir, "rl-rerun", *extra)
    args = [
        "train",
        "ppo",
        "--config",
        str(ROOT / "configs/tiny/grpo.yaml"),
        *_overrides(tiny_model, arithmetic_data, runs_dir, "rl-rerun"),
        *extra,
    ]
    first = start_cli_driver(args)
    state = config.run_dir / "state.json"

    def saved() -> int:
        return json.loads(state.read_text())["step"] if state.exists() else 0

    try:
        # Stopped after a checkpoint with a step logged past it, which the rerun cuts away.
        deadline = time.time() + 300
        while not (saved() >= 2 and max(r["step"] for r in _rows(config)) > saved()):
            assert first.poll() is None and time.time() < deadline, "no step past a save"
            time.sleep(0.05)
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    kept = saved()
    assert first.returncode == 143, out[-3000:]
    assert f"interrupted: kept {config.run_dir / f'checkpoint-{kept:06d}'} (step {kept})" in out
    assert "rayalign: stopped by SIGTERM" in out
    assert kept in (2, 4, 6)

    second = run_cli_driver(args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming at step {kept}" in second.stdout
    assert _registered(second.stdout)["step"] == 8

    # Every step once in every log.
    rows = _rows(config)
    assert [r["step"] for r in rows] == list(range(1, 9))
    evals = [
        json.loads(x)["step"] for x in (config.run_dir / "eval.jsonl").read_text().splitlines()
    ]
    assert evals == [0, 3, 6, 8]
    assert tensorboard_steps(config.run_dir, "reward") == list(range(1, 9))

    # The same samples and the same final policy as a run never stopped.
    straight = _config(tiny_model, arithmetic_data, runs_dir, "rl-straight", *extra)
    run_rl(straight)
    assert [r["reward"] for r in _rows(straight)] == [r["reward"] for r in rows]
    assert [r["tokens"] for r in _rows(straight)] == [r["tokens"] for r in rows]
    final = load_file(str(config.run_dir / "checkpoint-000008" / "model.safetensors"))
    expected = load_file(str(straight.run_dir / "checkpoint-000008" / "model.safetensors"))
    assert final.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(final[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
