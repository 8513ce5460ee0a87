"""Learner parallelism: one RL update of the same batch by one learner with every CPU and by
two data-parallel learners (torch DDP over gloo) with half each, as Ray actors.

The baseline is the single learner in the same run. The first update's loss and gradient
norm are reported for both: DDP with global token weighting takes the same step.

    python -m bench.learner_parallel [--preset small] [--batch 32] [--cpus 2]
"""

from __future__ import annotations

import argparse

import torch

from bench.common import model_dir, timed, write
from bench.learner_efficiency import synthetic_batch


def measure(
    preset: str, learners: int, cpus: int, batch: int, prompt_len: int, completion_len: int
):
    import ray

    from actors.policy_learner import PolicyLearner
    from pipelines.rl_actors import build_learners
    from rayalign.rl_config import PPOStageConfig

    rl = {
        "learning_rate": 1e-6,
        "minibatch_size": batch,  # one optimizer step: the same step for any learner count
        "aggregation": "token_mean",
        "max_logprob_mismatch": 1e9,  # repeats update one batch: the policy drifts from it
    }
    config = PPOStageConfig.model_validate(
        {
            "model": {"name_or_path": model_dir(preset)},
            "data": {"prompts": "unused.jsonl"},
            "run": {"name": "bench", "storage_path": "/tmp/rayalign-bench/runs"},
            "learner": {"num_learners": learners, "cpus_per_learner": cpus // learners},
            "rl": rl,
        }
    )
    local = PolicyLearner(model_dir(preset), config.rl)
    data = synthetic_batch(local, batch, prompt_len, completion_len)
    del local
    group = build_learners(config, model_dir(preset), critic=None)

    def update() -> dict:
        per_rank = ray.get([learner.update.remote(data) for learner in group])
        return {k: sum(m[k] for m in per_rank) / len(per_rank) for k in per_rank[0]}

    first = update()  # warm-up, and the step both settings take from the same weights
    seconds, _ = timed(update)
    for learner in group:
        ray.kill(learner)
    tokens = batch * (prompt_len + completion_len)
    return {
        "preset": preset,
        "learners": learners,
        "cpus_per_learner": cpus // learners,
        "update_seconds": seconds,
        "train_tokens_per_s": tokens / seconds,
        "first_policy_loss": first["policy_loss"],
        "first_grad_norm": first["grad_norm"],
    }


def main() -> None:
    import ray

    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--completion-len", type=int, default=32)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs shared by the learners")
    args = parser.parse_args()
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    try:
        rows = [
            measure(args.preset, n, args.cpus, args.batch, args.prompt_len, args.completion_len)
            for n in (1, 2)
        ]
    finally:
        ray.shutdown()
    one, two = rows
    figures = {
        "two_over_one_update_time": two["update_seconds"] / one["update_seconds"],
        "policy_loss_difference": abs(two["first_policy_loss"] - one["first_policy_loss"]),
        "grad_norm_relative_difference": abs(two["first_grad_norm"] - one["first_grad_norm"])
        / one["first_grad_norm"],
    }
    write(
        "learner_parallel",
        {
            "config": {**vars(args), "torch_version": torch.__version__},
            "rows": rows,
            "figures": figures,
        },
    )


if __name__ == "__main__":
    main()
