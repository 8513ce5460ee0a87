"""Time until N chat engines serve, started together on one local cluster: rayalign's
engine init callback (no per-node "download" task for a checkpoint on disk; on CPU, vLLM's
worker inside the engine-core process, not a spawned process of its own) against
`ray.serve.llm`'s default initialisation of the same `LLMConfig`s, in the same run.

Each round deploys N applications of the same checkpoint at once, waits until every one
runs, then deletes them. Rounds alternate between the two variants; the figures are
medians per variant.

    python -m bench.serve_startup [--engines 3] [--rounds 2] [--preset small]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from bench.common import model_dir, write


def _deploy_seconds(path: str, engines: int, variant: str) -> float:
    from ray import serve
    from ray.serve.llm import build_llm_deployment

    from serving.config import ChatModelOptions
    from serving.deploy import wait_running
    from serving.model_apps import llm_config
    from serving.ray_llm_adapter import CallbackConfig

    options = ChatModelOptions(max_model_len=128, cpu_kvcache_gib=0.25)
    names = [f"bench-{variant}-{i}" for i in range(engines)]
    targets = []
    for name in names:
        config = llm_config(name, path, options)
        if variant == "ray-default":
            config.callback_config = CallbackConfig()
        targets.append(serve.RunTarget(build_llm_deployment(config), name=name, route_prefix=None))
    start = time.perf_counter()
    serve.run_many(targets, wait_for_applications_running=False)
    wait_running(names)
    seconds = time.perf_counter() - start
    for name in names:
        serve.delete(name)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engines", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--preset", default="small")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")

    import ray
    from ray import serve

    path = model_dir(args.preset)
    ray.init(address="local", num_cpus=4 + 2 * args.engines, log_to_driver=False)
    try:
        serve.start()
        times: dict[str, list[float]] = {"ray-default": [], "rayalign": []}
        for round_ in range(args.rounds):
            for variant in times:
                seconds = _deploy_seconds(path, args.engines, variant)
                times[variant].append(seconds)
                print(f"round {round_}: {variant} {seconds:.1f} s", flush=True)
        median = {v: statistics.median(t) for v, t in times.items()}
        write(
            "serve_startup",
            {
                "config": vars(args),
                "rows": [
                    {"variant": v, "median_s": round(median[v], 1), "runs_s": times[v]}
                    for v in times
                ],
                "rayalign_vs_default_speedup": round(median["ray-default"] / median["rayalign"], 2),
            },
        )
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
