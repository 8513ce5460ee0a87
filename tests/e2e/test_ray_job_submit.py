"""The README's `ray job submit` command, run as written against a `ray start --head`
cluster whose PATH does not lead to this environment's Python: the stage finishes and
registers. `$PWD` stands for a checkout after `make demo` (the venv and runs/demo)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from rayalign.cluster import local_head_node
from rayalign.registry import Registry

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SHORT = ["training.max_steps=20", "training.save_steps=10"]  # appended: a short run


def readme_job_command() -> list[str]:
    """The README's `ray job submit` command, joined over its line continuations."""
    text = (REPO / "README.md").read_text()
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S) if "ray job" in b]
    assert len(blocks) == 1, "the README shows one ray job submit block"
    return shlex.split(re.sub(r"\\\n\s*", " ", blocks[0]).split("  #")[0])


def test_readme_job_submit_runs_as_written(tiny_model, arithmetic_data, tmp_path):
    checkout = tmp_path / "checkout"  # what $PWD holds after `make demo`
    (checkout / "runs" / "demo").mkdir(parents=True)
    (checkout / ".venv").symlink_to(sys.prefix)  # this environment's venv
    (checkout / "runs" / "demo" / "base").symlink_to(tiny_model)
    (checkout / "runs" / "demo" / "data").symlink_to(arithmetic_data)
    words = [w.replace("$PWD", str(checkout)) for w in readme_job_command()]
    assert words[:3] == ["ray", "job", "submit"] and "--working-dir" in words

    # No Python of this environment on the cluster's PATH: the command must not need it.
    path = ":".join(p for p in os.environ["PATH"].split(":") if Path(p) != BIN)
    env = {**os.environ, "PATH": path, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    with local_head_node(num_cpus=4, env=env) as head:
        words[words.index("--address") + 1] = head.jobs
        proc = subprocess.run(
            [str(BIN / "ray"), *words[1:], *SHORT],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            cwd=REPO,  # --working-dir . is the checkout the README is in
        )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout
    entry = Registry(checkout / "runs" / "demo").get("sft-1")
    assert entry.step == 20 and "heldout_accuracy" in entry.metrics
    assert (Path(entry.path) / "model.safetensors").exists()
