"""`rayalign serve` as a user runs it against a cluster: start, publish, remove, Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from rayalign.cluster import free_port
from tests.e2e.conftest import served_models, start_serve
from tests.serving.conftest import register_tiny

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _rayalign(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "rayalign"), *args], env=env, capture_output=True, text=True, timeout=600
    )


def _wait_for(predicate, timeout_s: float, what: str, proc: subprocess.Popen) -> None:
    deadline = time.time() + timeout_s
    while not predicate():
        assert proc.poll() is None, f"rayalign serve exited early: {proc.stdout.read()[-3000:]}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def test_serve_publish_remove_and_ctrl_c(head_node, tmp_path):
    registry = tmp_path / "runs"
    register_tiny(registry, "base", seed=0)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = start_serve(registry, port, head_node)
    try:
        _wait_for(lambda: served_models(port) == {"base"}, 300, "the endpoint", serve)
        # A checkpoint registered later is published on demand, by name.
        register_tiny(registry, "late", seed=1)
        assert served_models(port) == {"base"}  # --no-watch: nothing happens by itself
        args = ("--registry", str(registry), "--address", head_node.gcs)
        published = _rayalign("serve", "publish", "late", *args, env=head_node.env)
        assert published.returncode == 0, published.stderr[-3000:]
        time.sleep(1.5)  # the ingress refreshes its model list every second
        assert served_models(port) == {"base", "late"}
        reply = httpx.post(
            f"{url}/v1/chat/completions",
            json={
                "model": "late",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 4,
            },
            timeout=60,
        )
        assert reply.status_code == 200, reply.text
        unknown = _rayalign("serve", "publish", "nope", *args, env=head_node.env)
        assert unknown.returncode == 2 and "'nope' is not registered" in unknown.stderr
        removed = _rayalign("serve", "remove", "late", *args, env=head_node.env)
        assert removed.returncode == 0, removed.stderr[-3000:]
        time.sleep(1.5)
        assert served_models(port) == {"base"}
        # Ctrl-C shuts the endpoint down cleanly, with the shell's code for it.
        serve.send_signal(signal.SIGINT)
        out, _ = serve.communicate(timeout=120)
        assert serve.returncode == 130, out[-3000:]
        assert "[serve] shutting down" in out and "[serve] ready" in out
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{url}/v1/models", timeout=5)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()


def test_sigterm_while_engines_deploy_exits_without_waiting_for_them(head_node, tmp_path):
    registry = tmp_path / "runs"
    register_tiny(registry, "base", seed=0)
    serve = start_serve(registry, free_port(), head_node)
    try:
        lines = []
        while not any(line.startswith("[serve] serving") for line in lines):
            line = serve.stdout.readline()
            assert line, f"rayalign serve exited early: {''.join(lines)[-3000:]}"
            lines.append(line)
        serve.send_signal(signal.SIGTERM)  # the engine is still starting
        out, _ = serve.communicate(timeout=120)
        out = "".join(lines) + out
        assert serve.returncode == 143, out[-3000:]
        assert "[serve] shutting down" in out
        assert "[serve] ready" not in out  # it left without waiting for the engine
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
