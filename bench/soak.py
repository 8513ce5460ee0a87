"""Soak: the chat endpoint under steady load while a model comes and goes.

Starts a local cluster and the endpoint serving a random `tiny` model ("base"), then for
`--minutes` keeps `--clients` concurrent clients busy: chat completions and streaming
chats to "base" (some hanging up after the first chunks), and requests to a second model
("churn") that is published at the start of every minute and removed half-way through
it; a publication that takes longer (an engine starting on a loaded machine) is removed
as soon as it serves, and the next one starts at the next minute (`churn` in the result
says when each happened and how long it took). Reports per minute: requests, errors (a 404 for "churn" while it is removed is
expected and counted apart), hang-ups, p50 and p99 latency; and the resident memory of
each process of the cluster at the start and at the end.

The baseline is the run's own first minute: the last minute's latency and every
process's memory are also given as ratios to it (1.0: no drift).

    python -m bench.soak [--minutes 10] [--clients 32] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import httpx

from bench.common import model_dir, prompts, write

BASE, CHURN = "base", "churn"


class Minutes:
    """Outcomes bucketed by the minute of the run they finished in."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.rows: dict[int, dict] = defaultdict(
            lambda: {"requests": 0, "errors": 0, "expected_404": 0, "hung_up": 0, "lat": []}
        )
        self.error_kinds: dict[str, int] = defaultdict(int)

    def add(self, outcome: str, latency: float | None = None, kind: str = "") -> None:
        row = self.rows[int((time.monotonic() - self.started) // 60)]
        row["requests"] += 1
        if outcome != "ok":
            row[outcome] += 1
        if outcome == "errors":
            self.error_kinds[kind] += 1
        if latency is not None:
            row["lat"].append(latency)


async def _client(url: str, until: float, minutes: Minutes, max_tokens: int, seed: int) -> None:
    rng = random.Random(seed)
    convs = prompts(64)
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        while time.monotonic() < until:
            roll = rng.random()
            model = CHURN if roll >= 0.9 else BASE
            body = {
                "model": model,
                "messages": rng.choice(convs),
                "max_tokens": max_tokens,
                "temperature": 1.0,
            }
            started = time.monotonic()
            try:
                if 0.45 <= roll < 0.9:  # streaming; one in five hangs up after two chunks
                    hang_up = roll >= 0.8
                    async with http.stream(
                        "POST", "/v1/chat/completions", json={**body, "stream": True}
                    ) as reply:
                        if reply.status_code != 200:
                            await reply.aread()
                            minutes.add("errors", kind=f"HTTP {reply.status_code}")
                            continue
                        chunks = 0
                        async for line in reply.aiter_lines():
                            chunks += line.startswith("data: ")
                            if hang_up and chunks >= 2:
                                break
                    minutes.add("hung_up" if hang_up else "ok", time.monotonic() - started)
                    continue
                reply = await http.post("/v1/chat/completions", json=body)
                if reply.status_code == 200:
                    reply.json()["choices"][0]["message"]
                    minutes.add("ok", time.monotonic() - started)
                elif reply.status_code == 404 and model == CHURN:
                    minutes.add("expected_404")
                else:
                    minutes.add("errors", kind=f"HTTP {reply.status_code}")
            except (httpx.HTTPError, KeyError, ValueError) as err:
                minutes.add("errors", kind=type(err).__name__)


def _churn(config, registry: Path, until: float, stop: threading.Event, log: list) -> None:
    """Publish CHURN at the start of every minute, remove it half-way through."""
    from rayalign.models.factory import init_model
    from rayalign.registry import Registry, RegistryEntry
    from serving.deploy import RegistryWatch

    path = init_model("tiny", registry / "models" / CHURN, seed=1)
    watch = RegistryWatch(config)
    started = time.monotonic()
    minute = 0
    while not stop.is_set() and time.monotonic() < until:
        t = time.monotonic()
        Registry(registry).register(RegistryEntry(CHURN, "base", "chat", str(path)))
        watch.sync()  # waits until the engine serves
        log.append({"minute": minute, "event": "published", "took_s": time.monotonic() - t})
        if stop.wait(max(0.0, started + 60 * minute + 30 - time.monotonic())):
            break
        t = time.monotonic()
        Registry(registry).remove(CHURN)
        watch.sync()
        log.append({"minute": minute, "event": "removed", "took_s": time.monotonic() - t})
        minute = int((time.monotonic() - started) // 60) + 1  # the next minute to begin
        stop.wait(max(0.0, started + 60 * minute - time.monotonic()))


def _processes() -> dict[str, float]:
    """RSS in MB of this process and every process it started (the local cluster: GCS,
    raylet, the Serve controller, proxy and replicas), by process title."""
    import psutil

    me = psutil.Process()
    out: dict[str, float] = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            title = " ".join(proc.cmdline())[:60] or proc.name()
            name = "driver" if proc.pid == me.pid else title
            while name in out:
                name += "'"
            out[name] = proc.memory_info().rss / 2**20
        except psutil.Error:
            continue
    return out


def _summary(minutes: Minutes) -> list[dict]:
    rows = []
    for minute in sorted(minutes.rows):
        row = minutes.rows[minute]
        lat = sorted(row.pop("lat")) or [float("nan")]
        rows.append(
            {
                "minute": minute + 1,
                **row,
                "p50_s": statistics.median(lat),
                "p99_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # the bench's own throwaway cluster
    from rayalign.logs import configure

    configure()  # progress lines only: no line per HTTP request

    import ray
    from ray import serve

    from rayalign.cluster import free_port
    from rayalign.registry import Registry, RegistryEntry
    from serving.config import ServingConfig
    from serving.deploy import RegistryWatch, start_endpoint

    registry = Path(tempfile.mkdtemp(prefix="rayalign-soak-"))
    Registry(registry).register(RegistryEntry(BASE, "base", "chat", model_dir("tiny")))
    config = ServingConfig(
        registry=str(registry), port=free_port(), watch_interval_s=None, chat={"max_model_len": 256}
    )
    url = f"http://127.0.0.1:{config.port}"
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    stop = threading.Event()
    events: list[dict] = []
    try:
        start_endpoint(config)
        RegistryWatch(config).sync()
        warm = Minutes(time.monotonic())
        asyncio.run(_client(url, time.monotonic() + 10, warm, args.max_tokens, seed=-1))
        rss_start = _processes()
        started = time.monotonic()
        until = started + 60 * args.minutes
        churn = threading.Thread(target=_churn, args=(config, registry, until, stop, events))
        churn.start()
        minutes = Minutes(started)

        async def load() -> None:
            await asyncio.gather(
                *(
                    _client(url, until, minutes, args.max_tokens, seed=i)
                    for i in range(args.clients)
                )
            )

        asyncio.run(load())
        stop.set()
        churn.join(timeout=300)
        rss_end = _processes()
    finally:
        stop.set()
        serve.shutdown()
        ray.shutdown()

    rows = _summary(minutes)
    for r in rows:
        print(
            f"minute {r['minute']:2d}: {r['requests']:5d} requests, {r['errors']} errors, "
            f"{r['expected_404']} expected 404, {r['hung_up']} hung up, "
            f"p50 {r['p50_s']:.3f}s, p99 {r['p99_s']:.3f}s",
            flush=True,
        )
    full = [r for r in rows if r["minute"] <= int(args.minutes)] or rows
    first, last = full[0], full[-1]
    memory = [
        {"process": name, "rss_start_mb": mb, "rss_end_mb": rss_end[name],
         "end_over_start": rss_end[name] / mb}
        for name, mb in sorted(rss_start.items()) if name in rss_end
    ]  # fmt: skip
    for m in memory:
        print(f"{m['process'][:60]:60s} {m['rss_start_mb']:8.0f} -> {m['rss_end_mb']:8.0f} MB")
    write(
        "soak",
        {
            "config": {"minutes": args.minutes, "clients": args.clients,
                       "max_tokens": args.max_tokens, "model": "tiny"},
            "rows": rows,
            "drift": {
                "p50_last_over_first": last["p50_s"] / first["p50_s"],
                "p99_last_over_first": last["p99_s"] / first["p99_s"],
                "errors": sum(r["errors"] for r in rows),
                "error_kinds": dict(minutes.error_kinds),
            },
            "churn": events,
            "memory": memory,
        },
    )  # fmt: skip


if __name__ == "__main__":
    main()
