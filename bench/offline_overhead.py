"""Offline-stage overhead: rayalign's SFT and DPO stages on Ray Train against the same TRL
trainer run directly in this process (what a user would write without us), and two Ray
Train workers against one. Same model, data, batch and steps; medians of `--repeats`.
The bare trainer also runs with TRL's own default, gradient checkpointing on, which the
tiny configs turn off (`trainer:`): what that choice is worth on a small model.

Two figures per run: end-to-end samples/s (wall time of the whole call: Ray start,
worker group, data validation, checkpoint export, registry for rayalign; building the
trainer, training and saving for bare TRL) and train-loop samples/s (TRL's own
`train_samples_per_second`, the loop alone).

    python -m bench.offline_overhead [--preset small] [--steps 40] [--repeats 3]
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
STAGES = {"sft": "configs/tiny/sft.yaml", "dpo": "configs/tiny/dpo.yaml"}


def stage_config(
    stage: str, model: str, data: Path, runs: Path, name: str, steps: int, workers: int
):
    from pipelines.stage_registry import load_stage
    from rayalign.config import load_config

    train = data / ("sft_train.jsonl" if stage == "sft" else "preference_train.jsonl")
    cpus = max(1, (os.cpu_count() or 2) // workers)
    return load_config(
        load_stage(stage).config_cls,
        ROOT / STAGES[stage],
        [
            f"model.name_or_path={model}",
            f"data.train={train}",
            "data.eval=null",
            "data.prompts_eval=null",
            "data.preference_eval=null",
            f"run.storage_path={runs}",
            f"run.name={name}",
            f"resources.num_workers={workers}",
            f"resources.cpus_per_worker={cpus}",
            f"training.max_steps={steps}",
            f"training.save_steps={steps}",
            f"training.logging_steps={steps}",
        ],
    )


def loop_samples_per_s(log_history: list[dict]) -> float:
    return next(
        r["train_samples_per_second"] for r in log_history if "train_samples_per_second" in r
    )


def bare_trl(stage: str, config) -> dict[str, float]:
    """The TRL trainer rayalign would build, run directly: build, train, save."""
    from importlib import import_module

    from pipelines.stage_registry import REGISTRY
    from pipelines.trainer_inputs import stage_args

    recipe = import_module(REGISTRY[stage].module).TRAINER  # the stage's Ray Train recipe
    out = tempfile.mkdtemp(prefix="rayalign-bench-bare-")
    started = time.perf_counter()
    trainer = recipe.build_trainer(config, stage_args(recipe, config, out))
    trainer.train()
    trainer.save_model(str(Path(out) / "final"))
    wall = time.perf_counter() - started
    return {"wall_s": wall, "loop_samples_per_s": loop_samples_per_s(trainer.state.log_history)}


def rayalign_stage(stage: str, config) -> dict[str, float]:
    from pipelines.stage_registry import load_stage

    started = time.perf_counter()
    entry = load_stage(stage).run(config)
    wall = time.perf_counter() - started
    state = json.loads((Path(entry.path) / "trainer_state.json").read_text())
    return {"wall_s": wall, "loop_samples_per_s": loop_samples_per_s(state["log_history"])}


def medians(runs: list[dict[str, float]], samples: int) -> dict[str, float]:
    wall = statistics.median(r["wall_s"] for r in runs)
    return {
        "wall_s": wall,
        "end_to_end_samples_per_s": samples / wall,
        "loop_samples_per_s": statistics.median(r["loop_samples_per_s"] for r in runs),
    }


def main() -> None:
    import ray

    from rayalign.data.tasks import build_task
    from rayalign.data.tasks.splits import write_task_data

    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stages", default="sft,dpo")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ["RAY_ADDRESS"] = "local"  # never attach to another cluster on this machine
    tmp = Path(tempfile.mkdtemp(prefix="rayalign-bench-"))
    write_task_data(build_task("arithmetic"), tmp / "data", n_train=400, n_test=10)
    model = model_dir(args.preset)
    rows = []
    for stage in args.stages.split(","):
        figures: dict[str, dict[str, float]] = {}
        for label, workers in [
            ("bare_trl", 1),
            ("bare_trl_checkpointing", 1),
            ("rayalign_1_worker", 1),
            ("rayalign_2_workers", 2),
        ]:
            runs = []
            for i in range(args.repeats + 1):  # the first is the warm-up
                config = stage_config(
                    stage,
                    model,
                    tmp / "data",
                    tmp / "runs",
                    f"{stage}-{label}-{i}",
                    args.steps,
                    workers,
                )
                if label == "bare_trl_checkpointing":  # TRL's default
                    config.trainer = {**config.trainer, "gradient_checkpointing": True}
                if label.startswith("bare_trl"):
                    runs.append(bare_trl(stage, config))
                else:
                    runs.append(rayalign_stage(stage, config))
                    ray.shutdown()
            samples = args.steps * config.training.global_batch_size
            figures[label] = medians(runs[1:], samples)
            print(stage, label, figures[label], flush=True)
        bare, one, two = (
            figures["bare_trl"],
            figures["rayalign_1_worker"],
            figures["rayalign_2_workers"],
        )
        rows.append(
            {
                "stage": stage,
                **{f"{k}.{m}": v for k, f in figures.items() for m, v in f.items()},
                "loop_ratio_rayalign_vs_bare": one["loop_samples_per_s"]
                / bare["loop_samples_per_s"],
                "end_to_end_ratio_rayalign_vs_bare": one["end_to_end_samples_per_s"]
                / bare["end_to_end_samples_per_s"],
                "loop_ratio_2_vs_1_workers": two["loop_samples_per_s"] / one["loop_samples_per_s"],
                "loop_ratio_no_checkpointing_vs_trl_default": bare["loop_samples_per_s"]
                / figures["bare_trl_checkpointing"]["loop_samples_per_s"],
            }
        )
    write(
        f"offline_overhead_{args.preset}",
        {"config": {**vars(args), "cpus": os.cpu_count()}, "rows": rows},
    )


if __name__ == "__main__":
    main()
