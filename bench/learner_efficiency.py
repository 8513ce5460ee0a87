"""Learner efficiency: training tokens/s of the RL learner's update and the FLOP/s it
achieves, as a fraction of this machine's measured matmul FLOP/s (the physical limit).

The learner is `actors.policy_learner.PolicyLearner` run in-process (one rank) on a
synthetic GRPO batch of fixed shape; the update is what the RL driver calls every step:
a forward and backward pass per minibatch, pi_old being the sampling log-probs (one
synchronous epoch, `rl.old_logprobs: auto`).

FLOPs counted per token: 6 x N (forward and backward) with N the matmul parameters (every
linear layer including the LM head; embeddings excluded), plus the attention score and
value products (4 x S x d per layer, x3 with backward).

    python -m bench.learner_efficiency [--presets tiny,small,medium] [--batch 32]
"""

from __future__ import annotations

import argparse

import torch

from bench.common import model_dir, timed, write


def matmul_flops_per_s(n: int = 1024, repeats: int = 5) -> float:
    """Median float32 FLOP/s of an n x n x n matmul with torch's threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    seconds, _ = timed(lambda: a @ b, repeats=repeats)
    return 2 * n**3 / seconds


def matmul_params(model: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def synthetic_batch(learner, batch: int, prompt_len: int, completion_len: int):
    """Random tokens, with behaviour log-probs the learner's own (as vLLM's are, up to the
    mismatch the update checks)."""
    from actors.batches import TrainBatch

    g = torch.Generator().manual_seed(0)
    vocab = learner.policy.config.vocab_size
    ids = torch.randint(4, vocab, (batch, prompt_len + completion_len), generator=g).tolist()
    prompts, completions = [row[:prompt_len] for row in ids], [row[prompt_len:] for row in ids]
    return TrainBatch(
        prompt_ids=prompts,
        completion_ids=completions,
        mask=torch.ones(batch, completion_len),
        behaviour_logprobs=learner.logprobs(prompts, completions),
        advantages=torch.randn(batch, completion_len, generator=g),
    )


def measure(preset: str, batch: int, prompt_len: int, completion_len: int) -> dict:
    from actors.policy_learner import PolicyLearner
    from rayalign.rl_config import RLConfig

    # The repeats update on one batch, so the policy drifts from its behaviour log-probs:
    # the mismatch gate (a check on weight sync, which this bench does not do) is off.
    rl = RLConfig(
        learning_rate=1e-6,
        minibatch_size=min(16, batch),
        value_clip_eps=None,
        max_logprob_mismatch=1e9,
    )
    learner = PolicyLearner(model_dir(preset), rl)
    cfg = learner.policy.config
    data = synthetic_batch(learner, batch, prompt_len, completion_len)
    learner.update(data)  # warm-up
    seconds, _ = timed(lambda: learner.update(data))
    seq = prompt_len + completion_len
    tokens = batch * seq
    n = matmul_params(learner.policy)
    attention = 4 * seq * cfg.num_attention_heads * cfg.head_dim * cfg.num_hidden_layers
    flops = tokens * 3 * (2 * n + attention)
    return {
        "preset": preset,
        "matmul_params": n,
        "batch": batch,
        "sequence_tokens": seq,
        "update_seconds": seconds,
        "train_tokens_per_s": tokens / seconds,
        "achieved_flops_per_s": flops / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", default="tiny,small,medium")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--completion-len", type=int, default=32)
    args = parser.parse_args()
    peak = matmul_flops_per_s()
    rows = []
    for preset in args.presets.split(","):
        row = measure(preset, args.batch, args.prompt_len, args.completion_len)
        row["matmul_flops_per_s"] = peak
        row["fraction_of_matmul"] = row["achieved_flops_per_s"] / peak
        rows.append(row)
        print(row, flush=True)
    write(
        "learner_efficiency",
        {"config": {**vars(args), "torch_threads": torch.get_num_threads()}, "rows": rows},
    )


if __name__ == "__main__":
    main()
