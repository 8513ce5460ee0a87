"""A stage submitted with `ray job submit` to a `ray start --head` cluster finishes and registers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rayalign.registry import Registry

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_sft_as_ray_job(head_node, tiny_model, arithmetic_data, tmp_path):
    address, env = head_node.address, head_node.env
    storage = tmp_path / "runs"
    proc = subprocess.run(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            address,
            "--working-dir",
            str(REPO),
            "--",
            "python",
            "-m",
            "pipelines",
            "train",
            "sft",
            "--config",
            "configs/tiny/sft.yaml",
            f"model.name_or_path={tiny_model}",
            f"data.train={arithmetic_data / 'sft_train.jsonl'}",
            "data.eval=null",
            f"data.prompts_eval={arithmetic_data / 'prompts_test.jsonl'}",
            "data.preference_eval=null",
            f"run.storage_path={storage}",
            "run.name=job-sft",
            "training.max_steps=20",
            "training.save_steps=10",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout
    entry = Registry(storage).get("job-sft")
    assert entry.step == 20 and "heldout_accuracy" in entry.metrics
    assert (Path(entry.path) / "model.safetensors").exists()
