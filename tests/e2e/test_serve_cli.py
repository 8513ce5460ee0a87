"""`rayalign serve` stopped while its engines deploy. Start, publish, remove and Ctrl-C are
tested on the pipeline's checkpoints in test_pipeline_run.py (one endpoint start for both)."""

from __future__ import annotations

import signal

import pytest

from rayalign.cluster import free_port
from tests.e2e.conftest import start_serve
from tests.serving.conftest import register_tiny

pytestmark = pytest.mark.slow


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
