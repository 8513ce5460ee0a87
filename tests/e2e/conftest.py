"""A real `ray start --head` cluster on loopback for the end-to-end tests, and the
`rayalign serve` process they start against it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest

BIN = Path(sys.executable).parent


class HeadNode(NamedTuple):
    address: str  # the dashboard / job API URL
    gcs: str  # what `ray.init(address=...)` and `--address` of rayalign take
    env: dict[str, str]


@pytest.fixture()
def head_node():
    """A head node (dashboard and job API included) with 4 CPUs, stopped afterwards. Job
    entrypoints find this environment's `python` and `rayalign` first on PATH."""
    from rayalign.cluster import local_head_node

    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    with local_head_node(num_cpus=4, env=env) as head:
        yield HeadNode(head.jobs, head.gcs, env)


def start_serve(registry: Path, port: int, head: HeadNode, *args: str) -> subprocess.Popen:
    """`rayalign serve` for `registry` on `port` against the head node, without the watch,
    with `args` (e.g. `--models NAME`) added."""
    command = [str(BIN / "rayalign"), "serve", "--registry", str(registry), "--port", str(port)]
    command += ["--no-watch", "--address", head.gcs, "--set", "chat.max_model_len=128", *args]
    return subprocess.Popen(
        command, env=head.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def served_models(port: int) -> set[str]:
    """The ids `GET /v1/models` lists, or none while the endpoint is not up."""
    try:
        reply = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()
        return {m["id"] for m in reply["data"]}
    except (httpx.HTTPError, KeyError, ValueError):
        return set()
