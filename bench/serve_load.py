"""Load on the chat endpoint: a bounded number of concurrent requests over loopback.

Starts a local cluster and the endpoint serving one checkpoint (a random `tiny` model by
default, or `--registry DIR --model NAME`), warms it up, then sends `--requests` chat
completions with at most `--concurrency` in flight, for each concurrency given. Prints
throughput (requests/s, completion tokens/s), p50 and p99 latency and the error count.
Then the peer: the same checkpoint behind vLLM's own OpenAI server (`vllm serve`, same
engine settings, one process), under the same load in the same run (`--no-peer` skips it).

    python -m bench.serve_load [--concurrency 1 8 32] [--requests 64] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
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


def _sweep(url: str, model: str, args, label: str) -> list[dict]:
    asyncio.run(_load(url, model, 8, 4, args.max_tokens))  # warm-up
    runs = []
    for concurrency in args.concurrency:
        result = asyncio.run(_load(url, model, args.requests, concurrency, args.max_tokens))
        print(
            f"{label} concurrency {concurrency:3d}: {result['requests_per_s']:.2f} req/s, "
            f"{result['completion_tokens_per_s']:.0f} tok/s, p50 {result['p50_s']:.3f}s, "
            f"p99 {result['p99_s']:.3f}s, errors {result['errors']}",
            flush=True,
        )
        runs.append(result)
    return runs


def vllm_server_runs(path: str, model: str, args) -> list[dict]:
    """The same checkpoint behind `vllm serve` (vLLM's OpenAI server), same load."""
    from rayalign.cluster import free_port

    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", path, "--served-model-name", model, "--port", str(port),
        "--host", "127.0.0.1", "--enforce-eager", "--dtype", "auto",
    ]  # fmt: skip
    log_path = Path(tempfile.gettempdir()) / "rayalign-bench-vllm-serve.log"
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for_server(server, url, log_path)
            return _sweep(url, model, args, "vllm serve")
        finally:
            server.terminate()
            server.wait(timeout=60)


def _wait_for_server(server: subprocess.Popen, url: str, log_path: Path, timeout: float = 600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"vllm serve exited {server.returncode}; see {log_path}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"vllm serve did not come up in {timeout:.0f} s; see {log_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--registry", help="serve this registry's --model instead of a tiny one")
    parser.add_argument("--model", default="base")
    parser.add_argument("--preset", default="tiny", help="random model preset without --registry")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--no-peer", action="store_true", help="skip the `vllm serve` run")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import ray
    from ray import serve

    from rayalign.cluster import free_port
    from rayalign.registry import Registry, RegistryEntry
    from serving.config import ServingConfig
    from serving.deploy import RegistryWatch, start_endpoint

    registry = args.registry
    if registry is None:
        registry = str(Path(tempfile.mkdtemp(prefix="rayalign-serve-bench-")))
        Registry(registry).register(
            RegistryEntry(args.model, "base", "chat", model_dir(args.preset))
        )
    path = Registry(registry).get(args.model).path
    config = ServingConfig(
        registry=registry, port=free_port(), models=[args.model], watch_interval_s=None
    )
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    try:
        start_endpoint(config)
        RegistryWatch(config).sync()
        runs = _sweep(f"http://127.0.0.1:{config.port}", args.model, args, "rayalign")
    finally:
        serve.shutdown()
        ray.shutdown()
    rows = [{"server": "rayalign", **r} for r in runs]
    if not args.no_peer:
        peer = vllm_server_runs(path, args.model, args)
        rows += [{"server": "vllm serve", **r} for r in peer]
        for ours, theirs in zip(runs, peer, strict=True):
            rows.append(
                {
                    "server": "ratio rayalign / vllm serve",
                    "concurrency": ours["concurrency"],
                    "requests_per_s": ours["requests_per_s"] / theirs["requests_per_s"],
                    "p50_s": ours["p50_s"] / theirs["p50_s"],
                    "p99_s": ours["p99_s"] / theirs["p99_s"],
                }
            )
    write(
        "serve_load",
        {"config": {"model": args.model, "preset": args.preset, "max_tokens": args.max_tokens,
                    "requests": args.requests}, "rows": rows},
    )  # fmt: skip


if __name__ == "__main__":
    main()
