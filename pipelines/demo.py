"""`make demo`: the whole post-training pipeline on one local Ray cluster, small model.

base model -> SFT -> reward model -> PPO, with DPO, KTO and GRPO branches from the same
SFT checkpoint; every stage registered in runs/demo/registry.json and compared on the
same held-out exact-match accuracy.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipelines.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "tiny"
# Sums of operands 0..19: the small model learns them in ~1000 CPU steps (verbose answers in
# the SFT data stalled that learning, see tests/conftest.py).
TASK_OPTIONS = {"max_operand": 19, "ops": "+"}


def _prepare(out: Path) -> tuple[Path, Path, Path]:
    """The base model, the task splits, and the same questions with eight wrong answers each
    (the reward model's pairs)."""
    from pipelines.model_factory import init_model
    from pipelines.tasks import build_task
    from pipelines.tasks.splits import write_task_data

    base, data, pairs = out / "base", out / "data", out / "data-pairs"
    if not (base / "model.safetensors").exists():
        print("[demo] building the small random model and its tokenizer", flush=True)
        init_model("small", base, seed=0)
    for path, rejected in ((data, 1), (pairs, 8)):
        if not (path / "manifest.json").exists():
            print(f"[demo] writing the arithmetic task splits to {path}", flush=True)
            write_task_data(
                build_task("arithmetic", TASK_OPTIONS),
                path,
                seed=0,
                n_train=350,
                n_test=50,
                rejected_per_prompt=rejected,
            )
    return base, data, pairs


def _stage(name: str, overrides: list[str]):
    from pipelines.training import STAGES, run_stage

    stage = STAGES[name]()
    return run_stage(stage, load_config(stage.config_cls, CONFIGS / f"{name}.yaml", overrides))


def _rl(config_name: str, overrides: list[str]):
    from pipelines.ppo import run_rl
    from pipelines.ppo_config import PPOStageConfig

    return run_rl(load_config(PPOStageConfig, CONFIGS / f"{config_name}.yaml", overrides))


def run_demo(out: str = "runs/demo") -> list[dict]:
    """Run every stage (skipping those already registered) and print the comparison table."""
    from pipelines.cluster import init_ray
    from pipelines.evaluate import evaluate
    from serving.registry import Registry

    root = Path(out).resolve()
    base, data, pairs = _prepare(root)
    init_ray(4)
    registry = Registry(root)
    d = f"data.prompts_eval={data / 'prompts_test.jsonl'}"
    common = [f"run.storage_path={root}"]
    rows = [
        {
            "stage": "base",
            "heldout_accuracy": evaluate(str(base), str(data / "prompts_test.jsonl")).accuracy,
        }
    ]
    plan = [
        (
            "sft",
            lambda: _stage(
                "sft",
                [
                    *common,
                    f"model.name_or_path={base}",
                    f"data.train={data / 'sft_train.jsonl'}",
                    f"data.eval={data / 'sft_test.jsonl'}",
                    d,
                    f"data.preference_eval={data / 'preference_test.jsonl'}",
                ],
            ),
        ),
        (
            "rm",
            lambda: _stage(
                "reward_model",
                [
                    *common,
                    f"model.name_or_path={registry.get('sft').path}",
                    f"data.train={pairs / 'preference_train.jsonl'}",
                    f"data.eval={pairs / 'preference_test.jsonl'}",
                ],
            ),
        ),
        (
            "dpo",
            lambda: _stage(
                "dpo",
                [
                    *common,
                    f"model.name_or_path={registry.get('sft').path}",
                    f"data.train={data / 'preference_train.jsonl'}",
                    d,
                    f"data.preference_eval={data / 'preference_test.jsonl'}",
                ],
            ),
        ),
        (
            "kto",
            lambda: _stage(
                "kto",
                [
                    *common,
                    f"model.name_or_path={registry.get('sft').path}",
                    f"data.train={data / 'unpaired_train.jsonl'}",
                    d,
                    f"data.preference_eval={data / 'preference_test.jsonl'}",
                ],
            ),
        ),
        (
            "grpo",
            lambda: _rl(
                "grpo",
                [
                    *common,
                    f"model.name_or_path={registry.get('sft').path}",
                    f"data.prompts={data / 'prompts_train.jsonl'}",
                    d,
                ],
            ),
        ),
        (
            "ppo",
            lambda: _rl(
                "ppo",
                [
                    *common,
                    f"model.name_or_path={registry.get('sft').path}",
                    f"rewards.reward_model={registry.get('rm').path}",
                    f"data.prompts={data / 'prompts_train.jsonl'}",
                    d,
                ],
            ),
        ),
    ]
    for name, run in plan:
        t = time.time()
        entry = registry.get(name)
        if entry is None:
            print(f"[demo] === stage {name} ===", flush=True)
            entry = run()
        rows.append({"stage": name, "seconds": round(time.time() - t, 1), **entry.metrics})
    _print_table(rows)
    (root / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"[demo] registry: {root / 'registry.json'}; summary: {root / 'summary.json'}")
    return rows


def _print_table(rows: list[dict]) -> None:
    cols = [
        "heldout_accuracy",
        "heldout_contains_answer",
        "heldout_margin",
        "heldout_pairwise_accuracy",
        "reward",
        "seconds",
    ]
    print("\n" + f"{'stage':<8}" + "".join(f"{c.removeprefix('heldout_'):>20}" for c in cols))
    for row in rows:
        cells = "".join(
            f"{row[c]:>20.3f}" if isinstance(row.get(c), int | float) else f"{'-':>20}"
            for c in cols
        )
        print(f"{row['stage']:<8}{cells}")
    print()
