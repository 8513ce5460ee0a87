"""Users' reward functions in the RL stage: checked before any actor starts, and one
written here steers what GRPO teaches the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayalign.config import load_config
from rayalign.reward_functions import RewardFunctionError
from rayalign.rl_config import PPOStageConfig

ROOT = Path(__file__).resolve().parents[2]
SAYS = "tests.custom_rewards:says_the_answer"


def _config(policy, data: Path, runs: Path, *extra: str) -> PPOStageConfig:
    return load_config(
        PPOStageConfig,
        ROOT / "configs/tiny/grpo.yaml",
        [
            f"model.name_or_path={policy}",
            f"data.prompts={data / 'prompts_train.jsonl'}",
            f"data.prompts_eval={data / 'prompts_test.jsonl'}",
            f"run.storage_path={runs}",
            *extra,
        ],
    )


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("tests.custom_rewards:only_completions", "cannot take the call"),
        ("tests.custom_rewards:one_short", "returned 1 values for 2 completions"),
        ("tests.custom_rewards:not_finite", "returned nan"),
        ("tests.nowhere:f", "cannot import"),
    ],
)
def test_bad_reward_functions_stop_the_run_before_any_actor(
    monkeypatch, arithmetic_data, tmp_path, function, message
):
    import pipelines.ppo

    def no_ray(*_, **__):
        raise AssertionError("Ray started although a reward function is bad")

    monkeypatch.setattr(pipelines.ppo, "init_ray", no_ray)
    config = _config("policy", arithmetic_data, tmp_path, f'rewards.functions={{"{function}": 1}}')
    with pytest.raises(RewardFunctionError, match=f"reward function '{function}'.*{message}"):
        pipelines.ppo.run_rl(config)


def _as_question_answer_dataset(data: Path, out: Path) -> Path:
    """`data`'s prompt splits as a hub-layout dataset with gsm8k's column names."""
    from datasets import Dataset

    from rayalign.data.io import read_jsonl

    (out / "data").mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        rows = [
            {"question": r["prompt"], "answer": r["ground_truth"]}
            for r in read_jsonl(data / f"prompts_{split}.jsonl")
        ]
        Dataset.from_list(rows).to_parquet(str(out / "data" / f"{split}-00000-of-00001.parquet"))
    return out


@pytest.mark.slow
def test_grpo_on_a_users_reward_function_moves_heldout_behaviour(
    ray_local, sft_entry, easy_data, runs_dir
):
    from pipelines.ppo import run_rl

    # The prompts come as a gsm8k-style dataset (`question`/`answer` columns, train and
    # test splits in the hub's parquet layout) that a column mapping reads (issue 16 item 2).
    hub = _as_question_answer_dataset(easy_data, runs_dir / "prompts-hub")
    source = {"path": str(hub), "columns": {"question": "prompt", "answer": "ground_truth"}}
    config = _config(
        sft_entry.path,
        easy_data,
        runs_dir,
        f"data.prompts={json.dumps(source)}",
        f"data.prompts_eval={json.dumps(source)}",
        "run.name=grpo-custom-reward",
        f'rewards.functions={{"{SAYS}": 1.0}}',
        "rl.steps=10",
        "rl.eval_steps=10",
    )
    run_rl(config)
    evals = [json.loads(x) for x in (config.run_dir / "eval.jsonl").read_text().splitlines()]
    rows = [json.loads(x) for x in (config.run_dir / "metrics.jsonl").read_text().splitlines()]
    said = [e[f"heldout_reward/{SAYS}"] for e in evals]
    print("held-out share of answers in a sentence by eval step:", said)
    assert [e["step"] for e in evals] == [0, 10]
    assert all(f"reward/{SAYS}" in r for r in rows)  # logged per step
    # Sampled held-out answers in a sentence, from the session's SFT checkpoint in 10 steps
    # (2026-12-02, this 2-thread CPU): 0.12 -> 0.72 (seed 0), 0.31 -> 0.76 (seed 1). The
    # greedy answers leave the bare format the exact-match accuracy counts: 0.48 -> 0.00.
    assert said[-1] >= said[0] + 0.3
    assert evals[-1]["heldout_accuracy"] <= evals[0]["heldout_accuracy"] - 0.3
