"""LoRA in RL: what the two `rl.lora_sync` modes cost, measured in one run.

For each preset, a LoRA policy (r=16, every linear layer, adapters moved off zero) and
a vLLM engine in one process, as the colocated placement holds them:
- `merged`: the learner computes the merged weights (`merged_weights`, out of place)
  and the plain engine reloads them in place (vLLM re-packs them for its CPU kernels).
- `adapters`: the learner exports the adapter tensors alone; the LoRA engine
  (`enable_lora`) gets them written as an adapter folder and loads that.

Beside each sync: the engine's greedy generation time for the same prompts (vLLM's LoRA
layers add work per token), so the two costs can be weighed per RL step. Ratios are
adapters / merged, from the same process and prompts.

    python -m bench.lora_sync [--presets small,medium] [--rank 16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import ray

from bench.common import model_dir, prompts, write

REPEATS = 3


class Colocated:
    """A LoRA learner's policy and an engine in one process, synced as `mode` says."""

    def __init__(self, path: str, mode: str, rank: int) -> None:
        import torch

        from actors.generation_worker import GenerationWorker
        from rayalign.config import LoraConfig
        from rayalign.models.lora import with_adapters

        torch.set_num_threads(1)
        self.mode = mode
        self.policy = with_adapters(path, LoraConfig(r=rank, alpha=2 * rank))
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():  # trained-looking adapters: lora_B is zero at init
            for name, p in self.policy.named_parameters():
                if "lora_B" in name:
                    p.add_(torch.randn(p.shape, generator=g) * 1e-3)
        lora = {"r": rank, "alpha": 2 * rank} if mode == "adapters" else None
        self.engine = GenerationWorker(path, lora=lora)

    def sync(self, version: int) -> dict[str, float]:
        from actors.weight_sync import export_weights

        t0 = time.perf_counter()
        named = export_weights(self.policy, adapters_only=self.mode == "adapters")
        t1 = time.perf_counter()
        self.engine.load_received(list(named.items()), version)
        nbytes = sum(t.numel() * t.element_size() for t in named.values())
        return {"export_s": t1 - t0, "load_s": time.perf_counter() - t1, "bytes": nbytes}

    def generate_s(self, conversations: list[list[dict]], max_tokens: int) -> tuple[float, int]:
        from actors.batches import PromptRequest, SamplingOptions

        requests = [PromptRequest(i, c) for i, c in enumerate(conversations)]
        options = SamplingOptions(n=4, temperature=1.0, max_tokens=max_tokens, seed=0)
        t = time.perf_counter()
        samples = self.engine.generate(requests, options)
        return time.perf_counter() - t, sum(len(s.completion_ids) for s in samples)


def measure(path: str, mode: str, rank: int, conversations, max_tokens: int) -> dict:
    actor = ray.remote(num_cpus=1)(Colocated).remote(path, mode, rank)
    ray.get(actor.generate_s.remote(conversations[:2], 4))  # warm-up
    syncs = [ray.get(actor.sync.remote(v)) for v in range(1, REPEATS + 2)][1:]
    gens = [ray.get(actor.generate_s.remote(conversations, max_tokens)) for _ in range(REPEATS)]
    ray.kill(actor)
    row = {k: statistics.median(s[k] for s in syncs) for k in syncs[0]}
    row["sync_s"] = row["export_s"] + row["load_s"]
    row["generate_s"] = statistics.median(g[0] for g in gens)
    row["tokens"] = gens[0][1]
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", default="small,medium")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    conversations = prompts(args.prompts)
    rows = []
    try:
        for preset in args.presets.split(","):
            path = model_dir(preset)
            merged = measure(path, "merged", args.rank, conversations, args.max_tokens)
            adapters = measure(path, "adapters", args.rank, conversations, args.max_tokens)
            rows.append(
                {
                    "preset": preset,
                    "rank": args.rank,
                    **{f"merged_{k}": v for k, v in merged.items()},
                    **{f"adapters_{k}": v for k, v in adapters.items()},
                    "bytes_ratio": adapters["bytes"] / merged["bytes"],
                    "sync_time_ratio": adapters["sync_s"] / merged["sync_s"],
                    "generate_time_ratio": adapters["generate_s"] / merged["generate_s"],
                }
            )
            print(rows[-1], flush=True)
    finally:
        ray.shutdown()
    write("lora_sync", {"config": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
