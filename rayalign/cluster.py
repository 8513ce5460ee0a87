"""Connecting a driver to Ray: the job's cluster, or a local one sized for the stage."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import ray


def init_ray(min_cpus: float, address: str | None = None, **init_kwargs) -> None:
    """Attach to `address`, or to the cluster the driver runs in (a Ray job, RAY_ADDRESS,
    `ray start`), else start a local one declaring at least `min_cpus` logical CPUs (also
    what the address "local" asks for).

    Ray schedules by logical CPUs: on a 2-core machine a stage whose actors ask for
    3 CPUs in total would wait forever, although they share the cores happily.
    """
    if ray.is_initialized():
        return
    num_cpus = max(os.cpu_count() or 1, math.ceil(min_cpus))
    target = address or os.environ.get("RAY_ADDRESS")
    if target == "local":  # a new private cluster, sized for the stage like the fallback below
        ray.init(address="local", num_cpus=num_cpus, **init_kwargs)
        return
    if target:
        ray.init(address=address, **init_kwargs)
        return
    try:
        ray.init(address="auto", **init_kwargs)
    except ConnectionError:
        ray.init(num_cpus=num_cpus, **init_kwargs)


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HeadNode(NamedTuple):
    jobs: str  # the dashboard / Jobs API URL
    gcs: str  # the address ray.init() and `rayalign ... --address` take


@contextmanager
def local_head_node(
    num_cpus: int | None = None, timeout_s: float = 180, env: dict[str, str] | None = None
) -> Iterator[HeadNode]:
    """A `ray start --head` cluster on loopback for the duration of the block. Every port
    is a free one, so it never collides with another cluster on the machine. `env` is
    the environment of the cluster's processes (job entrypoints included).
    """
    ray_bin = str(Path(sys.executable).parent / "ray")
    dash_port = free_port()
    ports = {
        "port": free_port(),
        "dashboard-port": dash_port,
        "dashboard-agent-listen-port": free_port(),
        "dashboard-agent-grpc-port": free_port(),
        "metrics-export-port": free_port(),
        "ray-client-server-port": free_port(),
        "runtime-env-agent-port": free_port(),
    }
    env = {**(os.environ if env is None else env)}
    env.pop("RAY_ADDRESS", None)
    # Ray counts CPUs logically: declare enough for a stage's actors on a small machine.
    cpus = num_cpus or max(8, os.cpu_count() or 1)
    head = subprocess.Popen(
        [
            ray_bin,
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--num-cpus={cpus}",
            # A short temp dir: Ray's Unix sockets live under it (paths are capped at 107 bytes).
            f"--temp-dir={tempfile.mkdtemp(prefix='ra-', dir='/tmp')}",
            *(f"--{k}={v}" for k, v in ports.items()),
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    address = f"http://127.0.0.1:{dash_port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except OSError:
                if head.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the local Ray head node did not come up") from None
                time.sleep(1)
        yield HeadNode(address, f"127.0.0.1:{ports['port']}")
    finally:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGTERM)
            try:
                # A throwaway cluster: a short grace, then everything in its session goes.
                head.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(head.pid, signal.SIGKILL)
                head.wait()
