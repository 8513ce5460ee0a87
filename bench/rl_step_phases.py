"""Per-phase RL step time (generate, score, reference, update, sync) of synchronous GRPO
colocated and split, and of asynchronous (split) GRPO: same model, prompts and settings,
in one run. Prints medians and the ratios, among them each mode's step time over
max(sampling, training): the async goal is at most 1.15 (the step costs little more than
the longer of the two phases it overlaps).

    python -m bench.rl_step_phases [--preset small] [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import ray

from bench.common import model_dir, write


def run_mode(
    path: str, data: Path, storage: Path, steps: int, async_mode: bool, placement: str
) -> dict[str, float]:
    from pipelines.ppo import run_rl
    from rayalign.config import load_config
    from rayalign.rl_config import PPOStageConfig

    name = f"{'async' if async_mode else 'sync'}-{placement}"
    config = load_config(
        PPOStageConfig,
        Path(__file__).parents[1] / "configs/tiny/grpo.yaml",
        [
            f"model.name_or_path={path}",
            f"data.prompts={data / 'prompts_train.jsonl'}",
            "data.prompts_eval=null",
            f"run.storage_path={storage}",
            f"run.name={name}",
            f"rl.steps={steps}",
            f"rl.save_steps={steps}",
            f"rl.async={str(async_mode).lower()}",
            f"placement={placement}",
            "rl.eval_steps=1000",
        ],
    )
    run_rl(config)
    rows = [json.loads(x) for x in (config.run_dir / "metrics.jsonl").read_text().splitlines()][
        1:
    ]  # skip warm-up
    keys = [k for k in rows[0] if k.startswith("time/")]
    # (`generate_wait` is missing from an async run's last step: nothing comes after it.)
    out = {k.removeprefix("time/"): statistics.median(r[k] for r in rows if k in r) for k in keys}
    # Step time over the longer of sampling and training (score + reference + update):
    # 1.0 when one hides the other completely (async), their sum over the max when sync.
    out["step_over_max_generate_train"] = statistics.median(
        r["time/step"]
        / max(
            r["time/sampling"],
            sum(r.get(f"time/{p}", 0.0) for p in ("score", "reference", "update")),
        )
        for r in rows
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from rayalign.data.tasks import build_task
    from rayalign.data.tasks.splits import write_task_data

    tmp = Path(tempfile.mkdtemp(prefix="rayalign-bench-"))
    write_task_data(build_task("arithmetic"), tmp / "data", n_train=400, n_test=10)
    path = model_dir(args.preset)
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        colocated = run_mode(path, tmp / "data", tmp / "runs", args.steps, False, "colocated")
        sync = run_mode(path, tmp / "data", tmp / "runs", args.steps, False, "split")
        async_ = run_mode(path, tmp / "data", tmp / "runs", args.steps, True, "split")
    finally:
        ray.shutdown()
    write(
        f"rl_step_phases_{args.preset}",
        {
            "config": vars(args),
            "median_seconds": {"colocated": colocated, "sync": sync, "async": async_},
            "colocated_speedup_per_step_vs_split": sync["step"] / colocated["step"],
            "async_speedup_per_step": sync["step"] / async_["step"],
        },
    )


if __name__ == "__main__":
    main()
