"""RL time-to-accuracy and step time: rayalign GRPO (colocated, split, split async) against
`trl.GRPOTrainer`, on two workloads; colocated also with DAPO's dynamic sampling.

Same `small` model, SFT starting checkpoint, prompts, group size, prompts per step, learning
rate (constant), KL coefficient, completion length, loss aggregation, dtype (float32) and
number of steps, on this machine in one run. Each run saves a checkpoint every
`eval_every` steps; every checkpoint (and the start) is then scored by the same held-out
evaluator (`pipelines.evaluate`, HF greedy), outside the timed steps.

Workloads:
- `arithmetic`: the tests' and demo's setting. SFT 500 steps on sums of 0..19 where half the
  answers are sentences (held-out exact match ~0.4, right number in any format ~0.9), then
  30 GRPO steps with 6 new tokens towards exact match 0.8.
- `reversal-long`: reverse 40-64 letter words, 64 new tokens. Generation dominates the step,
  as in RL on real models. A short SFT teaches the answer's shape, not the skill, so this
  workload compares step time; accuracy is reported but barely moves.

Figures: median seconds per step (the first step is the warm-up and is left out), held-out
accuracy after the same number of steps, training seconds until held-out accuracy first
reaches the target, and ratios against TRL (>1: rayalign faster).

    python -m bench.rl_vs_trl [--workload arithmetic|reversal-long|all] [--start CKPT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, model_dir, write

ROOT = Path(__file__).resolve().parents[1]

WORKLOADS: dict[str, dict] = {
    "arithmetic": {
        "task": "arithmetic",
        "options": {"max_operand": 19, "ops": "+", "verbose_rate": 0.5},
        "sft_steps": 500,
        "max_length": 64,
        "max_new_tokens": 6,
        "steps": 30,
        "eval_every": 5,
        "target": 0.8,
        "dapo": True,
    },
    "reversal-long": {
        "task": "reversal",
        "options": {"min_length": 40, "max_length": 64},
        "sft_steps": 100,
        "max_length": 192,
        "max_new_tokens": 64,
        "steps": 6,
        "eval_every": 6,
        "target": None,  # start + 0.04
        # Rewards stay 0 here, so dynamic sampling would drop every group: no DAPO row.
        "dapo": False,
    },
}
# (name, placement, async, further overrides). `-dapo` adds DAPO's dynamic sampling
# (groups whose rewards are all equal leave the update), a rayalign option TRL lacks.
MODES = [
    ("rayalign-colocated", "colocated", False, []),
    ("rayalign-colocated-dapo", "colocated", False, ["rl.drop_uniform_groups=true"]),
    ("rayalign-split", "split", False, []),
    ("rayalign-split-async", "split", True, []),
]


def sft_start(base: str, data: Path, runs: Path, work: dict, name: str) -> str:
    """The SFT checkpoint RL starts from (the tests' SFT settings)."""
    from pipelines.stage_registry import load_stage
    from rayalign.config import load_config

    stage = load_stage("sft")
    steps = work["sft_steps"]
    config = load_config(
        stage.config_cls,
        ROOT / "configs/tiny/sft.yaml",
        [
            f"model.name_or_path={base}",
            f"data.train={data / 'sft_train.jsonl'}",
            "data.eval=null",
            "data.prompts_eval=null",
            "data.preference_eval=null",
            f"data.max_length={work['max_length']}",
            f"run.storage_path={runs}",
            f"run.name={name}",
            f"training.max_steps={steps}",
            f"training.save_steps={steps}",
        ],
    )
    return stage.run(config).path


def rayalign_grpo(
    start: str,
    data: Path,
    runs: Path,
    work: dict,
    label: str,
    placement: str,
    async_mode: bool,
    extra: list[str],
) -> dict:
    import ray

    from pipelines.ppo import run_rl
    from rayalign.config import load_config
    from rayalign.registry import Registry
    from rayalign.rl_config import PPOStageConfig

    name = f"{label}-{work['name']}"
    config = load_config(
        PPOStageConfig,
        ROOT / "configs/tiny/grpo.yaml",
        [
            f"model.name_or_path={start}",
            f"data.prompts={data / 'prompts_train.jsonl'}",
            "data.prompts_eval=null",  # scored afterwards by the shared evaluator
            f"run.storage_path={runs}",
            f"run.name={name}",
            f"rl.steps={work['steps']}",
            f"rl.save_steps={work['eval_every']}",
            f"rl.eval_steps={work['steps']}",
            f"rl.max_new_tokens={work['max_new_tokens']}",
            f"rl.async={str(async_mode).lower()}",
            f"placement={placement}",
            *extra,
        ],
    )
    try:
        run_rl(config)
    finally:
        ray.shutdown()
    rows = [json.loads(x) for x in (config.run_dir / "metrics.jsonl").read_text().splitlines()]
    registry = Registry(runs)
    every = work["eval_every"]
    return {
        "name": label,
        "step_seconds": [r["time/step"] for r in rows],
        "checkpoints": {
            s: registry.get(f"{name}-step-{s}").path for s in range(every, work["steps"] + 1, every)
        },
    }


def trl_grpo(start: str, data: Path, out: Path, work: dict) -> dict:
    """The same run with TRL's GRPOTrainer (HF generate for rollouts, one process)."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rayalign.config import load_config
    from rayalign.data.datasets import load_rows
    from rayalign.models.loading import load_causal_lm, load_tokenizer
    from rayalign.rewards import exact_match_reward
    from rayalign.rl_config import PPOStageConfig

    rl = load_config(PPOStageConfig, ROOT / "configs/tiny/grpo.yaml", []).rl
    dataset = Dataset.from_list(load_rows(str(data / "prompts_train.jsonl")))

    def exact_match(completions, ground_truth, **_):
        return [
            exact_match_reward(c[-1]["content"], t)
            for c, t in zip(completions, ground_truth, strict=True)
        ]

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []

        def on_step_begin(self, *_, **__):
            self.t = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.seconds.append(time.perf_counter() - self.t)

    times = StepTimes()
    config = GRPOConfig(
        output_dir=str(out),
        learning_rate=rl.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        per_device_train_batch_size=rl.prompts_per_step * rl.group_size,
        num_generations=rl.group_size,
        steps_per_generation=1,
        num_iterations=1,
        max_completion_length=work["max_new_tokens"],
        temperature=rl.temperature,
        beta=rl.kl_coef,
        epsilon=rl.clip_eps,
        loss_type="grpo",  # per-sequence token mean, then mean over sequences
        max_steps=work["steps"],
        logging_steps=1,
        save_strategy="steps",
        save_steps=work["eval_every"],
        save_only_model=True,
        use_cpu=True,
        # TRL >= 1.x defaults to bf16, which this CPU emulates at ~10x the cost (23 s a
        # step against 2.1 s on `small`); rayalign's config trains and samples in float32.
        bf16=False,
        report_to="none",
        seed=0,
        disable_tqdm=True,
    )
    tokenizer = load_tokenizer(start)
    trainer = GRPOTrainer(
        model=load_causal_lm(start),
        reward_funcs=exact_match,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[times],
    )
    trainer.train()
    checkpoints = {}
    every = work["eval_every"]
    for s in range(every, work["steps"] + 1, every):
        path = out / f"checkpoint-{s}"
        tokenizer.save_pretrained(str(path))  # evaluator loads the tokenizer from the checkpoint
        checkpoints[s] = str(path)
    return {"name": "trl", "step_seconds": times.seconds, "checkpoints": checkpoints}


def summarise(run: dict, start_accuracy: float, prompts_test: str, work: dict, target: float):
    from pipelines.evaluate import evaluate

    curve = {0: start_accuracy}
    for step, path in run["checkpoints"].items():
        curve[step] = evaluate(path, prompts_test, max_new_tokens=work["max_new_tokens"]).accuracy
    cumulative = [sum(run["step_seconds"][:s]) for s in range(len(run["step_seconds"]) + 1)]
    reached = next((s for s in sorted(curve) if s and curve[s] >= target), None)
    return {
        "workload": work["name"],
        "run": run["name"],
        "seconds_per_step": statistics.median(run["step_seconds"][1:]),
        "final_accuracy": curve[max(curve)],
        "accuracy_curve": {str(k): v for k, v in sorted(curve.items())},
        "seconds_to_target": cumulative[reached] if reached else None,
        "train_seconds": cumulative[-1],
    }


def run_workload(name: str, tmp: Path, start: str | None) -> tuple[list[dict], dict]:
    import ray

    from pipelines.evaluate import evaluate
    from rayalign.data.tasks import build_task
    from rayalign.data.tasks.splits import write_task_data

    work = {"name": name, **WORKLOADS[name]}
    data = tmp / name / "data"
    write_task_data(build_task(work["task"], work["options"]), data, n_train=350, n_test=50)
    runs = tmp / name / "runs"
    start = start or sft_start(model_dir("small"), data, runs, work, f"sft-{name}")
    ray.shutdown()
    prompts_test = str(data / "prompts_test.jsonl")
    start_accuracy = evaluate(start, prompts_test, max_new_tokens=work["max_new_tokens"]).accuracy
    target = work["target"] if work["target"] is not None else start_accuracy + 0.04
    runs_out = [
        rayalign_grpo(start, data, runs, work, label, placement, async_mode, extra)
        for label, placement, async_mode, extra in MODES
        if work["dapo"] or not label.endswith("-dapo")
    ]
    runs_out.append(trl_grpo(start, data, tmp / name / "trl", work))
    rows = [summarise(r, start_accuracy, prompts_test, work, target) for r in runs_out]
    trl = rows[-1]
    for row in rows[:-1]:
        row["step_speedup_vs_trl"] = trl["seconds_per_step"] / row["seconds_per_step"]
        if row["seconds_to_target"] and trl["seconds_to_target"]:
            row["time_to_target_speedup_vs_trl"] = (
                trl["seconds_to_target"] / row["seconds_to_target"]
            )
    for row in rows:
        print(row, flush=True)
    config = {k: v for k, v in work.items() if k != "name"}
    return rows, {name: {**config, "start_accuracy": start_accuracy, "target": target}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", default="all", choices=["all", *WORKLOADS])
    parser.add_argument("--start", help="SFT checkpoint to start from (one workload only)")
    args = parser.parse_args()
    names = list(WORKLOADS) if args.workload == "all" else [args.workload]
    if args.start and len(names) > 1:
        parser.error("--start needs --workload")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ["RAY_ADDRESS"] = "local"
    tmp = Path(tempfile.mkdtemp(prefix="rayalign-bench-rl-"))
    rows, config = [], {}
    for name in names:
        r, c = run_workload(name, tmp, args.start)
        rows += r
        config.update(c)
    # A run of one workload keeps the other workload's last figures.
    previous = RESULTS / "rl_vs_trl.json"
    if previous.exists():
        old = json.loads(previous.read_text())
        rows += [r for r in old.get("rows", []) if r.get("workload") in set(WORKLOADS) - set(names)]
        config = {**{k: v for k, v in old.get("config", {}).items() if k in WORKLOADS}, **config}
    write("rl_vs_trl", {"config": config, "rows": rows})


if __name__ == "__main__":
    main()
