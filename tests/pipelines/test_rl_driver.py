"""The RL driver's Ray logic with stand-in actors (no vLLM, no model): the order of a step's
phases, async staleness, multi-learner rendezvous, the files a run writes, resuming."""

from __future__ import annotations

import json
from itertools import groupby

import pytest
import ray
import torch

from pipelines.rl_checkpoint import RunState
from pipelines.rl_driver import RLDriver
from pipelines.rl_metrics import MetricsLog
from rayalign import rl_math
from rayalign.registry import Registry
from rayalign.rl_config import PPOStageConfig
from tests.pipelines.rl_stand_ins import Recorder, stand_in_actors

# No learner pass of its own for pi_old or the mismatch gate: the update does both.
STEP_ORDER = ["generate", "score", "reference", "advantages", "update", "sync"]


@pytest.fixture()
def recorder(ray_local):
    rec = Recorder.options(name="rl-recorder").remote()
    yield rec
    ray.kill(rec)


def _config(tmp_path, name: str, **rl) -> PPOStageConfig:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt": f"{i} + 1 = ?", "ground_truth": str(i + 1)}) + "\n"
            for i in range(6)
        )
    )
    return PPOStageConfig.model_validate(
        {
            "model": {"name_or_path": "stand-in"},
            "data": {"prompts": str(prompts)},
            "run": {"name": name, "storage_path": str(tmp_path / "runs")},
            "rollout": {"chunk_size": 2},
            "rl": {"prompts_per_step": 4, "save_steps": 2, "eval_steps": 100, **rl},
        }
    )


def _run(config: PPOStageConfig, recorder, delay_s: float = 0.0, state: RunState | None = None):
    config.run_dir.mkdir(parents=True, exist_ok=True)
    state = state or RunState()
    actors = stand_in_actors(config, state, recorder, delay_s)
    metrics = MetricsLog(config.run_dir, config.run.name, config.rl.steps, actors.controller)
    try:
        entry = RLDriver(config, actors, state, metrics).run()
    finally:
        metrics.close()
        actors.shutdown()
    return entry, ray.get(recorder.get.remote())


def _rows(config: PPOStageConfig, file: str = "metrics.jsonl") -> list[dict]:
    return [json.loads(x) for x in (config.run_dir / file).read_text().splitlines()]


def test_sync_step_runs_the_phases_in_order(recorder, tmp_path):
    config = _config(tmp_path, "order", algorithm="ppo", group_size=1, steps=3)
    entry, events = _run(config, recorder)
    names = [k for k, _ in groupby(e[0] for e in events if e[0] != "learner_created")]
    assert names == STEP_ORDER * 3
    # Sync mode: every step samples with the weights of all updates so far, never stale.
    updates = [e for e in events if e[0] == "update"]
    assert [(e[2], e[3]) for e in updates] == [(0, [0]), (1, [1]), (2, [2])]
    rows = _rows(config)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["logprob_mismatch"] == 0.0 for r in rows)  # fresh samples, matching weights
    assert all(r["samples"] == 4 and "value_explained_var" in r for r in rows)
    assert json.loads((config.run_dir / "state.json").read_text())["step"] == 3
    assert json.loads((config.run_dir / "result.json").read_text())["step"] == 3
    registry = Registry(config.run_dir.parent)
    assert registry.get("order").step == 3 and registry.get("order-step-2").step == 2


def test_async_samples_are_exactly_one_step_stale(recorder, tmp_path):
    config = _config(tmp_path, "async", steps=4, group_size=2, **{"async": True})
    _, events = _run(config, recorder, delay_s=0.2)
    updates = [e for e in events if e[0] == "update"]
    # Step 1 trains on the starting weights; step k+1 (k >= 1) on samples drawn with step
    # k's weights, i.e. one update behind the learner: never fresher, never staler.
    assert [(e[2], e[3]) for e in updates] == [(0, [0]), (1, [0]), (2, [1]), (3, [2])]
    generated = [e[1] for e in events if e[0] == "generate"]
    assert generated == [0, 0, 0, 0, 1, 1, 2, 2]  # two chunks per step
    rows = _rows(config)
    assert rows[0]["logprob_mismatch"] == 0.0
    assert all(r["logprob_mismatch"] != r["logprob_mismatch"] for r in rows[1:])  # NaN
    # Samples drawn ahead cost the step no generation time, but their sampling is timed
    # (each stand-in generate sleeps 0.2 s) and the wait for them after training too.
    assert all(r["time/generate"] < 0.1 <= 0.2 <= r["time/sampling"] for r in rows[1:])
    assert all("time/generate_wait" in r for r in rows[:-1])
    # GRPO: the update gets the group-normalised advantages of the scorer's rewards (odd
    # lengths score 1; completion j of prompt i has 1 + (i + j) % 3 tokens).
    lengths = [1 + (i + j) % 3 for i in range(4) for j in range(2)]
    expected = rl_math.grpo_advantages(torch.tensor([float(n % 2) for n in lengths]), 2)
    assert all([row[0] for row in e[4]] == pytest.approx(expected.tolist()) for e in updates)


def test_two_learners_meet_at_rank_0s_address_and_resume(recorder, tmp_path):
    config = _config(tmp_path, "resume", steps=4)
    config.learner.num_learners = 2
    config.learner.cpus_per_learner = 0.5
    config.run_dir.mkdir(parents=True)
    RunState(step=2, checkpoint="ckpt", optimizer="ckpt/optimizer.pt").write(config.run_dir)
    state = RunState.load(config.run_dir)
    assert state == RunState(step=2, checkpoint="ckpt", optimizer="ckpt/optimizer.pt")
    _, events = _run(config, recorder, state=state)
    # No spare learner to find an address: rank 0 gives one from its own node.
    assert sorted(e[1] for e in events if e[0] == "learner_created") == [0, 1]
    joins = sorted(e[1:] for e in events if e[0] == "join")
    assert joins == [(0, "rank-0-node:1234"), (1, "rank-0-node:1234")]
    assert sorted(e[1:] for e in events if e[0] == "load_optimizer") == [
        (0, "ckpt/optimizer.pt"),
        (1, "ckpt/optimizer.pt"),
    ]
    assert sorted(e[1] for e in events if e[0] == "update") == [0, 0, 1, 1]
    assert [r["step"] for r in _rows(config)] == [3, 4]
    assert [e[1] for e in events if e[0] == "sync"] == [3, 4]
    assert json.loads((config.run_dir / "state.json").read_text())["step"] == 4


def test_no_reference_pass_without_a_kl_term(recorder, tmp_path):
    config = _config(tmp_path, "nokl", steps=2, group_size=2, kl_coef=0.0)
    _, events = _run(config, recorder)
    names = {e[0] for e in events}
    assert "update" in names and "reference" not in names
    assert all(r["kl"] != r["kl"] for r in _rows(config))  # NaN: not measured


def test_groups_with_equal_rewards_leave_the_update(recorder, tmp_path):
    config = _config(tmp_path, "dapo", steps=2, group_size=2, drop_uniform_groups=True)
    _, events = _run(config, recorder)
    # Prompt i's two completions have 1 + i % 3 and 1 + (i + 1) % 3 tokens and odd lengths
    # score 1: prompt 2's group scores (1, 1), the other three groups (1, 0) or (0, 1).
    updates = [e for e in events if e[0] == "update"]
    assert [len(e[4]) for e in updates] == [6, 6]
    assert all(abs(row[0]) > 0.5 for e in updates for row in e[4])  # only +-1 advantages left
    rows = _rows(config)
    assert [r["dropped_groups"] for r in rows] == [1.0, 1.0]
    assert all(r["samples"] == 8 for r in rows)
