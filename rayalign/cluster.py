"""Connecting a driver to Ray: the job's cluster, or a local one sized for the stage."""

from __future__ import annotations

import json
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import ray

from rayalign import interrupts


def init_ray(min_cpus: float, address: str | None = None, **init_kwargs) -> None:
    """Attach to `address`, or to the cluster the driver runs in (a Ray job, RAY_ADDRESS,
    `ray start`), else start a local one declaring at least `min_cpus` logical CPUs (also
    what the address "local" asks for).

    Ray schedules by logical CPUs: on a 2-core machine a stage whose actors ask for
    3 CPUs in total would wait forever, although they share the cores happily.
    """
    if ray.is_initialized():
        return
    try:
        _init(min_cpus, address, **init_kwargs)
    finally:
        # ray.init replaces SIGTERM's handler: a graceful stop needs ours back.
        interrupts.reinstall()


def _init(min_cpus: float, address: str | None, **init_kwargs) -> None:
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


AUTH_MODE_ENV = "RAY_AUTH_MODE"


def default_token_path() -> Path:
    """Where Ray looks for its auth token when neither RAY_AUTH_TOKEN nor
    RAY_AUTH_TOKEN_PATH is set (`ray get-auth-token` reads and writes it)."""
    return Path.home() / ".ray" / "auth_token"


def with_token_auth(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with Ray's token auth on, for a cluster rayalign starts for a user.

    The token is generated on first use (256 random bits in `default_token_path()`,
    readable by the user only), unless RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH names one.
    Every Ray client of the user (`ray job submit`, the dashboard, `ray.init`) finds it
    there. An explicit RAY_AUTH_MODE=disabled is kept: a test's throwaway cluster.
    """
    env = dict(env)
    if env.get(AUTH_MODE_ENV, "").lower() == "disabled":
        return env
    if not env.get("RAY_AUTH_TOKEN") and not env.get("RAY_AUTH_TOKEN_PATH"):
        path = default_token_path()
        if not path.is_file() or not path.read_text().strip():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
    env[AUTH_MODE_ENV] = "token"
    return env


def auth_token(env: Mapping[str, str]) -> str | None:
    """The token a client with environment `env` sends (None: auth is off)."""
    if env.get(AUTH_MODE_ENV, "").lower() != "token":
        return None
    if env.get("RAY_AUTH_TOKEN"):
        return env["RAY_AUTH_TOKEN"]
    return Path(env.get("RAY_AUTH_TOKEN_PATH") or default_token_path()).read_text().strip()


def use_token_auth() -> bool:
    """Turn Ray's token auth on for this process (its drivers and Jobs API clients) as
    `with_token_auth` does for a cluster's environment. Returns whether it is on."""
    if with_token_auth(os.environ).get(AUTH_MODE_ENV) != "token":
        return False
    os.environ[AUTH_MODE_ENV] = "token"
    # Ray caches its config when it is imported: re-read the mode from the environment,
    # as ray.init does when it turns auth on for a new local cluster (Ray 2.60).
    from ray._raylet import Config

    Config.initialize("")
    return True


class HeadNode(NamedTuple):
    jobs: str  # the dashboard / Jobs API URL
    gcs: str  # the address ray.init() and `rayalign ... --address` take


def _node_ports(head: bool) -> dict[str, int]:
    """A free port for each of a local node's listeners that would otherwise take a fixed
    default (two nodes on one machine would collide)."""
    names = [
        "node-manager-port",
        "object-manager-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "metrics-export-port",
        "runtime-env-agent-port",
    ]
    if head:
        names += ["port", "dashboard-port", "ray-client-server-port"]
    return {name: free_port() for name in names}


def _start_node(args: list[str], ports: dict[str, int], env: dict[str, str]):
    """`ray start --block ARGS` with `ports`, in a session of its own."""
    ray_bin = str(Path(sys.executable).parent / "ray")
    return subprocess.Popen(
        [
            ray_bin,
            "start",
            "--block",
            "--node-ip-address=127.0.0.1",
            # A short temp dir: Ray's Unix sockets live under it (paths are capped at 107 bytes).
            f"--temp-dir={tempfile.mkdtemp(prefix='ra-', dir='/tmp')}",
            *args,
            *(f"--{k}={v}" for k, v in ports.items()),
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stop_node(node: subprocess.Popen) -> None:
    if node.poll() is None:
        os.killpg(node.pid, signal.SIGTERM)
        try:
            # A throwaway cluster: a short grace, then everything in its session goes
            # (`ray start --block` does not exit on SIGTERM by itself; the raylet and
            # GCS have ended by then, and runs keep their state in their own storage).
            node.wait(timeout=2)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait()


def _cluster_env(env: Mapping[str, str] | None) -> dict[str, str]:
    env = with_token_auth(os.environ if env is None else env)
    env.pop("RAY_ADDRESS", None)
    if env.get(AUTH_MODE_ENV) == "token":
        use_token_auth()
    return env


@contextmanager
def local_head_node(
    num_cpus: int | None = None,
    timeout_s: float = 180,
    env: dict[str, str] | None = None,
    resources: Mapping[str, float] | None = None,
) -> Iterator[HeadNode]:
    """A `ray start --head` cluster on loopback for the duration of the block. Every port
    is a free one, so it never collides with another cluster on the machine. `env` is
    the environment of the cluster's processes (job entrypoints included); `resources`
    the head's custom resources.

    Ray's token auth is on (`with_token_auth`), for the cluster and for this process's
    clients of it, unless `env` says RAY_AUTH_MODE=disabled.
    """
    ports = _node_ports(head=True)
    env = _cluster_env(env)
    # Ray counts CPUs logically: declare enough for a stage's actors on a small machine.
    cpus = num_cpus or max(8, os.cpu_count() or 1)
    args = ["--head", "--include-dashboard=true", "--dashboard-host=127.0.0.1"]
    args += [f"--num-cpus={cpus}", f"--resources={json.dumps(dict(resources or {}))}"]
    head = _start_node(args, ports, env)
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    token = auth_token(env)
    version = urllib.request.Request(
        f"{address}/api/version", headers={"Authorization": f"Bearer {token}"} if token else {}
    )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(version, timeout=2)
                break
            except OSError:
                if head.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the local Ray head node did not come up") from None
                time.sleep(1)
        yield HeadNode(address, f"127.0.0.1:{ports['port']}")
    finally:
        _stop_node(head)


@contextmanager
def local_worker_node(
    head: HeadNode,
    name: str,
    num_cpus: int,
    resources: Mapping[str, float] | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 120,
) -> Iterator[str]:
    """Another node of `head`'s cluster on this machine (`ray start --address`), with its
    own temp dir, ports, CPUs and custom `resources`, for the block. Yields its node id
    once the cluster lists it alive (it carries the label `rayalign-node=NAME`). `env` as
    for `local_head_node`."""
    env = _cluster_env(env)
    args = [f"--address={head.gcs}", f"--num-cpus={num_cpus}", f"--labels=rayalign-node={name}"]
    args.append(f"--resources={json.dumps(dict(resources or {}))}")
    node = _start_node(args, _node_ports(head=False), env)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            ids = [
                n["node_id"]
                for n in alive_nodes(head, env)
                if n.get("labels", {}).get("rayalign-node") == name
            ]
            if ids:
                break
            if node.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"local Ray node {name} did not join the cluster at {head.gcs}")
            time.sleep(0.5)
        yield ids[0]
    finally:
        _stop_node(node)


def alive_nodes(head: HeadNode, env: Mapping[str, str] | None = None) -> list[dict]:
    """The cluster's alive nodes as its dashboard's state API lists them (node_id,
    is_head_node, resources_total...)."""
    token = auth_token(os.environ if env is None else env)
    request = urllib.request.Request(
        f"{head.jobs}/api/v0/nodes?limit=1000&detail=true",
        headers={"Authorization": f"Bearer {token}"} if token else {},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        nodes = json.load(reply)["data"]["result"]["result"]
    return [n for n in nodes if n["state"] == "ALIVE"]
