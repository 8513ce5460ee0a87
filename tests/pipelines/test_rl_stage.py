"""The RL stage (pipelines/ppo.py) learns, stays consistent, scales and resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.config import load_config
from pipelines.evaluate import evaluate
from pipelines.ppo_config import PPOStageConfig

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def weak_sft(sft_entry) -> Path:
    """SFT's mid-run checkpoint: it answers some questions, leaving RL room to improve."""
    return Path(sft_entry.path).parent / "checkpoint-000500"


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


def test_grpo_raises_heldout_accuracy(ray_local, weak_sft, easy_data, runs_dir):
    from pipelines.ppo import run_rl

    config = _rl_config("grpo", weak_sft, easy_data, runs_dir)
    before = evaluate(str(weak_sft), str(easy_data / "prompts_test.jsonl")).accuracy
    entry = run_rl(config)
    after = entry.metrics["heldout_accuracy"]
    rows = _metrics(config)
    print(f"GRPO held-out accuracy {before:.2f} -> {after:.2f}; rewards", [round(r["reward"], 2) for r in rows])
    assert after >= before + 0.15
    assert max(r["logprob_mismatch"] for r in rows) < config.rl.max_logprob_mismatch
    assert [r["step"] for r in rows] == list(range(1, config.rl.steps + 1))
