"""The RL stage (pipelines/ppo.py) learns, stays consistent, scales and resumes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rayalign.config import load_config
from rayalign.rl_config import PPOStageConfig

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
# From the SFT checkpoint (sums learnt, half the answers in sentences): 0.42 -> 0.88 held-out
# exact match in 30 steps when written.
GRPO_GAIN = 0.25
# The split placement runs the same algorithm with another weight transport: 10 steps show
# that every update reached the worker (the mismatch gate, each step) and that it learns.
# Held-out exact match at step 10 from the same start: 0.78 (configs/tiny/grpo.yaml), 0.84
# (bench.rl_vs_trl, sync), 0.66 with one-step-stale samples (async).
SPLIT_STEPS, SPLIT_GAIN = 10, 0.1


def _rl_config(name: str, policy: Path, data: Path, runs: Path, *extra: str) -> PPOStageConfig:
    return load_config(
        PPOStageConfig,
        ROOT / "configs" / "tiny" / f"{name}.yaml",
        [
            f"model.name_or_path={policy}",
            f"data.prompts={data / 'prompts_train.jsonl'}",
            f"data.prompts_eval={data / 'prompts_test.jsonl'}",
            f"run.storage_path={runs}",
            *extra,
        ],
    )


def _metrics(config: PPOStageConfig) -> list[dict]:
    return [json.loads(x) for x in (config.run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("placement", ["colocated", "split"])
def test_grpo_raises_heldout_accuracy(ray_local, sft_entry, easy_data, runs_dir, placement):
    from pipelines.ppo import run_rl

    config = _rl_config(
        "grpo",
        Path(sft_entry.path),
        easy_data,
        runs_dir,
        f"placement={placement}",
        f"run.name=grpo-{placement}",
        *([f"rl.steps={SPLIT_STEPS}"] if placement == "split" else []),
    )
    before = sft_entry.metrics["heldout_accuracy"]  # the same greedy held-out measure
    entry = run_rl(config)
    after = entry.metrics["heldout_accuracy"]
    rows = _metrics(config)
    print(
        f"GRPO held-out accuracy {before:.2f} -> {after:.2f}; rewards",
        [round(r["reward"], 2) for r in rows],
    )
    assert after >= before + (SPLIT_GAIN if placement == "split" else GRPO_GAIN)
    assert max(r["logprob_mismatch"] for r in rows) < config.rl.max_logprob_mismatch
    assert [r["step"] for r in rows] == list(range(1, config.rl.steps + 1))
    if placement == "split":  # every sync reached the worker over the weight group
        sent = [r.get("weight_sync/bytes", 0) for r in rows]
        assert min(sent) > 0 and len(set(sent)) == 1, sent


def test_grpo_async_mode_learns_with_stale_samples(ray_local, sft_entry, easy_data, runs_dir):
    from pipelines.ppo import run_rl

    config = _rl_config(
        "grpo",
        Path(sft_entry.path),
        easy_data,
        runs_dir,
        "run.name=grpo-async",
        "rl.async=true",
        "rl.steps=10",  # staleness shows from step 2; learning is the sync tests' concern
    )
    before = sft_entry.metrics["heldout_accuracy"]  # the same greedy held-out measure
    entry = run_rl(config)
    rows = _metrics(config)
    after = entry.metrics["heldout_accuracy"]
    print(f"async GRPO held-out accuracy {before:.2f} -> {after:.2f}")
    assert after >= before - 0.05
    # Only step 1 is sampled with the learner's current weights; later steps are one step stale.
    assert rows[0]["logprob_mismatch"] < config.rl.max_logprob_mismatch
    assert all(
        r["logprob_mismatch"] != r["logprob_mismatch"] for r in rows[1:]
    )  # NaN: nothing fresh to gate
    assert all(r.get("weight_sync/bytes", 0) > 0 for r in rows)  # broadcast to the workers


def test_ppo_with_critic_and_reward_model(ray_local, sft_entry, rm_entry, easy_data, runs_dir):
    from pipelines.ppo import run_rl

    config = _rl_config(
        "ppo", Path(sft_entry.path), easy_data, runs_dir, f"rewards.reward_model={rm_entry.path}"
    )
    entry = run_rl(config)
    rows = _metrics(config)
    evals = [json.loads(x) for x in (config.run_dir / "eval.jsonl").read_text().splitlines()]
    ev = [r["value_explained_var"] for r in rows]
    print(
        f"PPO held-out accuracy {sft_entry.metrics['heldout_accuracy']:.2f} -> "
        f"{entry.metrics['heldout_accuracy']:.2f}; held-out RM reward",
        [(e["step"], round(e["heldout_reward"], 3)) for e in evals],
        "; critic explained variance",
        [round(x, 2) for x in ev[::5]],
    )
    # Held-out reward (50 unseen prompts x 4 samples) is measured before training and at
    # every eval step. When written, against the 1.0-accurate reward model: 0.86 -> 0.96 ->
    # 1.35 -> 1.67 at steps 0/10/20/30, and held-out exact match 0.42 -> 0.76 (the reward
    # model, trained on bare answers, scores the sentence answers low).
    assert [e["step"] for e in evals] == [0, 10, 20, 30]
    assert all(math.isfinite(e["heldout_reward"]) for e in evals)
    # On an AMD EPYC 2-core machine (2026-12-02), with the fixture's reward model at 0.868
    # pairwise (seed 0; 0.973 on the machine above): held-out reward 1.61 -> 1.95 -> 2.03 ->
    # 2.17 and exact match 0.42 -> 0.38 -> 0.40 -> 0.42; explained variance -0.00 -> 0.43.
    # The weaker reward model does not teach the format in 30 steps, so exact match is only
    # held to what SFT had, less 0.1; the reward rise is the learning claim.
    assert evals[-1]["heldout_reward"] > evals[0]["heldout_reward"] + 0.3
    assert entry.metrics["heldout_accuracy"] >= sft_entry.metrics["heldout_accuracy"] - 0.1
    # The critic (initialised from the reward model) learns the returns of rollouts it has not
    # yet trained on: explained variance 0.07 -> 0.31 (first vs last five steps) when written.
    first, last = sum(ev[:5]) / 5, sum(ev[-5:]) / 5
    assert last > 0.15 and last > first + 0.1
