"""A real `ray start --head` cluster on loopback for the end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import NamedTuple

import pytest

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HeadNode(NamedTuple):
    address: str  # the dashboard / job API URL
    gcs: str  # what `ray.init(address=...)` and `--address` of rayalign take
    env: dict[str, str]


@pytest.fixture()
def head_node():
    """A real head node on loopback (dashboard and job API included), stopped afterwards."""
    gcs_port, dash_port = _free_port(), _free_port()
    # Every fixed default port gets a free one: the session's own local cluster may hold them.
    extra_ports = [
        f"--{name}={_free_port()}"
        for name in (
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "metrics-export-port",
            "ray-client-server-port",
            "runtime-env-agent-port",
        )
    ]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={gcs_port}",
            "--node-ip-address=127.0.0.1",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash_port}",
            "--num-cpus=4",
            # A short temp dir: Ray's Unix sockets live under it (paths are capped at 107 bytes).
            f"--temp-dir={tempfile.mkdtemp(prefix='ra-', dir='/tmp')}",
            *extra_ports,
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    address = f"http://127.0.0.1:{dash_port}"
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            break
        except OSError:
            if time.time() > deadline or head.poll() is not None:
                if head.poll() is None:
                    os.killpg(head.pid, signal.SIGKILL)
                raise AssertionError("the head node's job API did not come up") from None
            time.sleep(1)
    yield HeadNode(address, f"127.0.0.1:{gcs_port}", env)
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
