"""RL time-to-accuracy: rayalign GRPO (sync and async) against `trl.GRPOTrainer`.

Same `small` model and SFT starting checkpoint, same arithmetic prompts, group size,
prompts per step, learning rate (constant), KL coefficient, completion length, loss
aggregation and number of steps, on this machine in one run. Each run saves a checkpoint
every `--eval-every` steps; every checkpoint (and the start) is then scored by the same
held-out evaluator (`pipelines.evaluate`, HF greedy), outside the timed steps.

Figures: median seconds per step (the first step is the warm-up and is left out), held-out
accuracy after the same number of steps, training seconds until held-out accuracy first
reaches the target, and ratios against TRL.

    python -m bench.rl_vs_trl [--steps 30] [--eval-every 10] [--start CKPT] [--target ACC]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import model_dir, write

ROOT = Path(__file__).resolve().parents[1]
DATA_OPTIONS = ["max_operand=19", "ops=+"]


def sft_start(base: str, data: Path, runs: Path, steps: int) -> str:
    """A part-trained SFT checkpoint, so RL has room to raise accuracy."""
    from pipelines.stage_registry import load_stage
    from rayalign.config import load_config

    stage = load_stage("sft")
    config = load_config(
        stage.config_cls,
        ROOT / "configs/tiny/sft.yaml",
        [
            f"model.name_or_path={base}",
            f"data.train={data / 'sft_train.jsonl'}",
            "data.eval=null",
            "data.prompts_eval=null",
            "data.preference_eval=null",
            f"run.storage_path={runs}",
            "run.name=sft-start",
            f"training.max_steps={steps}",
            f"training.save_steps={steps}",
        ],
    )
    return stage.run(config).path


def rayalign_grpo(start: str, data: Path, runs: Path, args, async_mode: bool) -> dict:
    import ray

    from pipelines.ppo import run_rl
    from rayalign.config import load_config
    from rayalign.registry import Registry
    from rayalign.rl_config import PPOStageConfig

    name = "rayalign-async" if async_mode else "rayalign-sync"
    config = load_config(
        PPOStageConfig,
        ROOT / "configs/tiny/grpo.yaml",
        [
            f"model.name_or_path={start}",
            f"data.prompts={data / 'prompts_train.jsonl'}",
            "data.prompts_eval=null",  # scored afterwards by the shared evaluator
            f"run.storage_path={runs}",
            f"run.name={name}",
            f"rl.steps={args.steps}",
            f"rl.save_steps={args.eval_every}",
            f"rl.eval_steps={args.steps}",
            f"rl.async={str(async_mode).lower()}",
        ],
    )
    try:
        run_rl(config)
    finally:
        ray.shutdown()
    rows = [json.loads(x) for x in (config.run_dir / "metrics.jsonl").read_text().splitlines()]
    registry = Registry(runs)
    checkpoints = {
        s: registry.get(f"{name}-step-{s}").path
        for s in range(args.eval_every, args.steps + 1, args.eval_every)
    }
    return {
        "name": name,
        "step_seconds": [r["time/step"] for r in rows],
        "checkpoints": checkpoints,
    }


def trl_grpo(start: str, data: Path, out: Path, args) -> dict:
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
        max_completion_length=rl.max_new_tokens,
        temperature=rl.temperature,
        beta=rl.kl_coef,
        epsilon=rl.clip_eps,
        loss_type="grpo",  # per-sequence token mean, then mean over sequences
        max_steps=args.steps,
        logging_steps=1,
        save_strategy="steps",
        save_steps=args.eval_every,
        save_only_model=True,
        use_cpu=True,
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
    for s in range(args.eval_every, args.steps + 1, args.eval_every):
        path = out / f"checkpoint-{s}"
        tokenizer.save_pretrained(str(path))  # evaluator loads the tokenizer from the checkpoint
        checkpoints[s] = str(path)
    return {"name": "trl", "step_seconds": times.seconds, "checkpoints": checkpoints}


def summarise(run: dict, start_accuracy: float, prompts_test: str, target: float) -> dict:
    from pipelines.evaluate import evaluate

    curve = {0: start_accuracy}
    for step, path in run["checkpoints"].items():
        curve[step] = evaluate(path, prompts_test, max_new_tokens=6).accuracy
    cumulative = [sum(run["step_seconds"][:s]) for s in range(len(run["step_seconds"]) + 1)]
    reached = next((s for s in sorted(curve) if s and curve[s] >= target), None)
    return {
        "run": run["name"],
        "seconds_per_step": statistics.median(run["step_seconds"][1:]),
        "final_accuracy": curve[max(curve)],
        "accuracy_curve": {str(k): v for k, v in sorted(curve.items())},
        "seconds_to_target": cumulative[reached] if reached else None,
        "train_seconds": cumulative[-1],
    }


def main() -> None:
    from pipelines.evaluate import evaluate
    from rayalign.data.tasks import build_task
    from rayalign.data.tasks.splits import write_task_data

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--start", help="SFT checkpoint to start from (default: train one)")
    parser.add_argument("--sft-steps", type=int, default=300)
    parser.add_argument("--target", type=float, help="held-out accuracy (default: start + 0.04)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ["RAY_ADDRESS"] = "local"
    tmp = Path(tempfile.mkdtemp(prefix="rayalign-bench-rl-"))
    data = tmp / "data"
    options = dict(o.split("=") for o in DATA_OPTIONS)
    write_task_data(build_task("arithmetic", options), data, n_train=350, n_test=50)
    start = args.start or sft_start(model_dir("small"), data, tmp / "runs", args.sft_steps)
    import ray

    ray.shutdown()
    prompts_test = str(data / "prompts_test.jsonl")
    start_accuracy = evaluate(start, prompts_test, max_new_tokens=6).accuracy
    target = args.target if args.target is not None else start_accuracy + 0.04
    runs = [
        rayalign_grpo(start, data, tmp / "runs", args, async_mode=False),
        rayalign_grpo(start, data, tmp / "runs", args, async_mode=True),
        trl_grpo(start, data, tmp / "trl", args),
    ]
    rows = [summarise(r, start_accuracy, prompts_test, target) for r in runs]
    trl = rows[-1]
    for row in rows[:-1]:
        row["step_speedup_vs_trl"] = trl["seconds_per_step"] / row["seconds_per_step"]
        if row["seconds_to_target"] and trl["seconds_to_target"]:
            row["time_to_target_speedup_vs_trl"] = (
                trl["seconds_to_target"] / row["seconds_to_target"]
            )
    for row in rows:
        print(row, flush=True)
    write(
        "rl_vs_trl",
        {
            "config": {**vars(args), "start_accuracy": start_accuracy, "target": target},
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
