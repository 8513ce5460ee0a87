"""What vLLM's detokenizer costs a rollout: the same engine and requests sampled with
`detokenize=True` (vLLM's default: incremental text plus a decoded token for every log-prob
entry) and `detokenize=False` (token ids only, as `GenerationWorker` asks since it decodes
each completion itself). Rounds alternate between the two; medians.

    python -m bench.sampling_overhead [--preset small] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from bench.common import model_dir, prompts, write

# (prompts, samples each, new tokens): the RL tests' step, and longer completions.
SHAPES = [(16, 8, 6), (16, 8, 32)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="small")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # as in a rollout worker
    from vllm import SamplingParams

    from actors.generation_worker import GenerationWorker

    worker = GenerationWorker(model_dir(args.preset))
    rows = []
    for n_prompts, n, max_tokens in SHAPES:
        batch = [{"prompt_token_ids": worker.encode(m)} for m in prompts(n_prompts)]
        seconds: dict[bool, list[float]] = {True: [], False: []}
        for r in range(args.rounds + 1):
            for detokenize in (True, False):
                params = SamplingParams(
                    n=n, temperature=1.0, max_tokens=max_tokens, logprobs=0, detokenize=detokenize
                )
                t = time.perf_counter()
                worker.llm.generate(batch, params, use_tqdm=False)
                if r:  # round 0 warms up both
                    seconds[detokenize].append(time.perf_counter() - t)
        on, off = statistics.median(seconds[True]), statistics.median(seconds[False])
        row = {
            "prompts": n_prompts,
            "samples_per_prompt": n,
            "max_new_tokens": max_tokens,
            "detokenize_s": on,
            "ids_only_s": off,
            "speedup_ids_only": on / off,
        }
        print(row, flush=True)
        rows.append(row)
    write("sampling_overhead", {"config": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
