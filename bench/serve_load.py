"""Load on the chat endpoint: a bounded number of concurrent requests over loopback.

Starts a local cluster and the endpoint serving one checkpoint (a random `tiny` model by
default, or `--registry DIR --model NAME`), warms it up, then sends `--requests` chat
completions with at most `--concurrency` in flight, for each concurrency given. Prints
throughput (requests/s, completion tokens/s), p50 and p99 latency and the error count.

    python -m bench.serve_load [--concurrency 1 8 32] [--requests 64] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import model_dir, prompts, write


async def _load(url: str, model: str, n: int, concurrency: int, max_tokens: int) -> dict:
    convs = prompts(n)
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    tokens, errors = 0, 0
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def one(messages):
            nonlocal tokens, errors
            async with gate:
                started = time.perf_counter()
                try:
                    reply = await client.post(
                        "/v1/chat/completions",
                        json={
                            "model": model,
                            "messages": messages,
                            "max_tokens": max_tokens,
                            "temperature": 1.0,
                            "ignore_eos": True,
                        },
                    )
                    reply.raise_for_status()
                    tokens += reply.json()["usage"]["completion_tokens"]
                    latencies.append(time.perf_counter() - started)
                except (httpx.HTTPError, KeyError, ValueError):
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(one(m) for m in convs))
        elapsed = time.perf_counter() - started
    ordered = sorted(latencies) or [float("nan")]
    return {
        "concurrency": concurrency,
        "requests": n,
        "errors": errors,
        "requests_per_s": len(latencies) / elapsed,
        "completion_tokens_per_s": tokens / elapsed,
        "p50_s": statistics.median(ordered),
        "p99_s": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--registry", help="serve this registry's --model instead of a tiny one")
    parser.add_argument("--model", default="base")
    parser.add_argument("--preset", default="tiny", help="random model preset without --registry")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import ray
    from ray import serve

    from pipelines.cluster import free_port
    from serving.config import ServingConfig
    from serving.deploy import RegistryWatch, start_endpoint
    from serving.registry import Registry, RegistryEntry

    registry = args.registry
    if registry is None:
        registry = str(Path(tempfile.mkdtemp(prefix="rayalign-serve-bench-")))
        path = model_dir(args.preset)
        Registry(registry).register(RegistryEntry(args.model, "base", "chat", path))
    config = ServingConfig(
        registry=registry, port=free_port(), models=[args.model], watch_interval_s=None
    )
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    try:
        start_endpoint(config)
        RegistryWatch(config).sync()
        url = f"http://127.0.0.1:{config.port}"
        asyncio.run(_load(url, args.model, 8, 4, args.max_tokens))  # warm-up
        runs = []
        for concurrency in args.concurrency:
            result = asyncio.run(
                _load(url, args.model, args.requests, concurrency, args.max_tokens)
            )
            print(
                f"concurrency {concurrency:3d}: {result['requests_per_s']:.2f} req/s, "
                f"{result['completion_tokens_per_s']:.0f} tok/s, p50 {result['p50_s']:.3f}s, "
                f"p99 {result['p99_s']:.3f}s, errors {result['errors']}",
                flush=True,
            )
            runs.append(result)
        write("serve_load", {"model": args.model, "max_tokens": args.max_tokens, "runs": runs})
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
