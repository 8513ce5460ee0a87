"""RL learner memory: peak resident memory (RSS) of one update of the `medium` model with
gradient checkpointing (`rl.gradient_checkpointing`) and micro-batching
(`rl.micro_batch_size`) each on and off, as ratios against both off, in the same run.

Each setting runs in a fresh process (the kernel's peak RSS only grows), which loads the
learner (`actors.policy_learner.PolicyLearner`, one rank, in-process), takes one update on
a synthetic GRPO batch and reports its peak. The floor beside it is what any setting must
hold: weights, gradients and AdamW's two moments (4 x parameters x 4 bytes), measured as
the RSS after the optimizer state exists (a first update on a 1-token batch).

    python -m bench.learner_memory [--preset medium] [--batch 16] [--completion-len 240]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

SETTINGS = [
    {"gradient_checkpointing": False, "micro_batch_size": None},
    {"gradient_checkpointing": True, "micro_batch_size": None},
    {"gradient_checkpointing": False, "micro_batch_size": 2},
    {"gradient_checkpointing": True, "micro_batch_size": 2},
]


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def one(preset: str, batch: int, prompt_len: int, completion_len: int, setting: dict) -> dict:
    """One setting in this process: the learner's peak RSS over one update."""
    import torch

    from actors.policy_learner import PolicyLearner
    from bench.common import model_dir
    from bench.learner_efficiency import synthetic_batch
    from rayalign.rl_config import RLConfig

    rl = RLConfig(
        learning_rate=1e-6,
        minibatch_size=batch,
        value_clip_eps=None,
        max_logprob_mismatch=1e9,
        **setting,
    )
    learner = PolicyLearner(model_dir(preset), rl)
    params = sum(p.numel() for p in learner.policy.parameters())
    learner.update(synthetic_batch(learner, batch, 1, 1))  # creates AdamW's state
    floor = _rss_mib()
    data = synthetic_batch(learner, batch, prompt_len, completion_len)
    started = time.perf_counter()
    learner.update(data)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        **{
            k: "off" if v in (False, None) else "on" if v is True else v for k, v in setting.items()
        },
        "peak_rss_mib": peak,
        "after_optimizer_state_mib": floor,
        "params_x16_bytes_mib": params * 16 / 2**20,
        "update_seconds": seconds,
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="medium")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--completion-len", type=int, default=240)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a setting as JSON: the child run
    args = parser.parse_args()
    shape = (args.preset, args.batch, args.prompt_len, args.completion_len)
    if args.one:
        print(json.dumps(one(*shape, json.loads(args.one))), flush=True)
        return
    from bench.common import model_dir, write

    model_dir(args.preset)  # built once, before the measured processes
    rows = []
    for setting in SETTINGS:
        out = subprocess.run(
            [sys.executable, "-m", "bench.learner_memory", "--one", json.dumps(setting)]
            + [f"--preset={args.preset}", f"--batch={args.batch}"]
            + [f"--prompt-len={args.prompt_len}", f"--completion-len={args.completion_len}"],
            check=True,
            capture_output=True,
            text=True,
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(row, flush=True)
    base = rows[0]
    for row in rows:
        row["peak_vs_both_off"] = row["peak_rss_mib"] / base["peak_rss_mib"]
        above_floor = base["peak_rss_mib"] - base["after_optimizer_state_mib"]
        row["above_floor_vs_both_off"] = (
            row["peak_rss_mib"] - row["after_optimizer_state_mib"]
        ) / above_floor
        row["time_vs_both_off"] = row["update_seconds"] / base["update_seconds"]
    write("learner_memory", {"config": vars(args) | {"one": None}, "rows": rows})


if __name__ == "__main__":
    main()
