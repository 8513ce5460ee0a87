"""Rollout tokens/s: the vLLM generation pool with 1 and 2 workers against HF `generate`,
same model and prompts, in one run, after warm-up. Prints figures and ratios.

    python -m bench.rollout_throughput [--preset small] [--prompts 64] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import os

import ray
import torch

from bench.common import model_dir, prompts, timed, write


def hf_tokens_per_s(path: str, convs, max_tokens: int) -> float:
    from rayalign.models.loading import load_causal_lm, load_tokenizer

    tok, model = load_tokenizer(path), load_causal_lm(path)

    def run():
        enc = tok.apply_chat_template(
            convs, add_generation_prompt=True, return_tensors="pt", padding=True, return_dict=True
        )
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=max_tokens,
                do_sample=True,
                min_new_tokens=max_tokens,
                pad_token_id=tok.pad_token_id,
            )
        return (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]

    run()  # warm-up
    seconds, tokens = timed(run)
    return tokens / seconds


def pool_tokens_per_s(path: str, convs, max_tokens: int, workers: int) -> float:
    from actors.batches import PromptRequest, SamplingOptions
    from actors.generation_worker import remote_generation_worker
    from actors.rollout_pool import RolloutPool

    cls = remote_generation_worker(num_cpus=1)
    pool = RolloutPool(
        lambda name: cls.remote(path, name=name),
        workers,
        chunk_size=max(1, len(convs) // (2 * workers)),
    )
    requests = [PromptRequest(i, c) for i, c in enumerate(convs)]
    sampling = SamplingOptions(n=1, temperature=1.0, max_tokens=max_tokens)

    def run():
        return sum(len(s.completion_ids) for g in pool.generate(requests, sampling) for s in g)

    run()  # warm-up: the first generate of each engine is slow
    seconds, tokens = timed(run)
    pool.shutdown()
    return tokens / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="small")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    path, convs = model_dir(args.preset), prompts(args.prompts)
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        hf = hf_tokens_per_s(path, convs, args.max_tokens)
        one = pool_tokens_per_s(path, convs, args.max_tokens, 1)
        two = pool_tokens_per_s(path, convs, args.max_tokens, 2)
    finally:
        ray.shutdown()
    write(
        f"rollout_throughput_{args.preset}",
        {
            "config": vars(args),
            "tokens_per_s": {"hf_generate": hf, "pool_1_worker": one, "pool_2_workers": two},
            "ratio_vs_hf": {"pool_1_worker": one / hf, "pool_2_workers": two / hf},
            "scaling_2_over_1": two / one,
        },
    )


if __name__ == "__main__":
    main()
