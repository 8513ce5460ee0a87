"""`rayalign pipeline run` against a `ray start --head` cluster by address: interrupted
once, rerun, finished stages skipped, every checkpoint registered and then served by
`rayalign serve` as a user runs it: a later checkpoint published and removed, Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from rayalign.cluster import free_port
from rayalign.registry import Registry
from tests.conftest import checkpoint_committed, tensorboard_steps
from tests.e2e.conftest import served_models, start_serve

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _pipeline(storage: Path) -> dict:
    tiny = ["training.save_steps=20", "data.preference_eval=null"]
    return {
        "name": "e2e",
        "storage_path": str(storage),
        "stages": [
            {
                "name": "base",
                "rayalign": ["init-model", "--preset", "tiny", "--out", "${storage}/base"],
            },
            {
                "name": "data",
                "rayalign": [
                    "data",
                    "make",
                    "--out",
                    "${storage}/data",
                    "--n-train",
                    "100",
                    "--n-test",
                    "20",
                ],
            },
            {
                "name": "sft",
                "stage": "sft",
                "config": "configs/tiny/sft.yaml",
                "after": ["base", "data"],
                "overrides": [
                    "model.name_or_path=${storage}/base",
                    "data.train=${storage}/data/sft_train.jsonl",
                    "data.eval=null",
                    "data.prompts_eval=${storage}/data/prompts_test.jsonl",
                    # Long enough to be interrupted after its first checkpoint (step 20).
                    "training.max_steps=120",
                    # 100 rows in batches of 20: every checkpoint falls at the end of an
                    # epoch, where a resume that skips the whole next epoch would train
                    # nothing (verl #7401).
                    "training.global_batch_size=20",
                    "training.logging_steps=5",
                    *tiny,
                ],
            },
            {
                "name": "dpo",
                "stage": "dpo",
                "config": "configs/tiny/dpo.yaml",
                "after": ["sft"],
                "overrides": [
                    "model.name_or_path=${sft.path}",
                    "data.train=${storage}/data/preference_train.jsonl",
                    "data.prompts_eval=null",
                    "training.max_steps=10",
                    *tiny,
                ],
            },
        ],
    }


def _state(storage: Path) -> dict:
    path = storage / "pipeline-e2e.json"
    return json.loads(path.read_text())["stages"] if path.exists() else {}


def _run(config: Path, address: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "rayalign"), "pipeline", "run", "--config", str(config), "--address", address],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_pipeline_interrupted_rerun_skips_finished_then_serve_publish_remove_ctrl_c(
    head_node, tmp_path
):
    storage = tmp_path / "runs"
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(_pipeline(storage)))

    first = _run(config, head_node.address, head_node.env)
    deadline = time.time() + 600
    while not checkpoint_committed(storage / "sft"):
        assert first.poll() is None, first.stdout.read()[-3000:]
        assert time.time() < deadline, "sft wrote no checkpoint"
        time.sleep(0.5)
    first.send_signal(signal.SIGINT)
    out, _ = first.communicate(timeout=120)
    assert first.returncode == 130, out[-3000:]
    state = _state(storage)
    assert state["base"]["status"] == state["data"]["status"] == "succeeded"
    assert state["sft"]["status"] == "interrupted" and state["dpo"]["status"] == "pending"

    second = _run(config, head_node.address, head_node.env)
    out, _ = second.communicate(timeout=900)
    assert second.returncode == 0, out[-3000:]
    assert "[pipeline] base: done earlier, skipped" in out
    assert "[pipeline] data: done earlier, skipped" in out
    assert "[sft] " in out and "[dpo] " in out  # the jobs' logs were streamed
    attempts = [
        json.loads(x) for x in (storage / "sft" / "attempts.jsonl").read_text().splitlines()
    ]
    assert attempts[0]["start_step"] == 0 and attempts[-1]["start_step"] >= 20
    final = json.loads((storage / "sft" / "final" / "trainer_state.json").read_text())
    assert final["epoch"] == pytest.approx(24.0)
    # The resumed epochs were trained, each step once: from the checkpoint's history on.
    assert [h["step"] for h in final["log_history"] if "loss" in h] == list(range(5, 121, 5))
    # Each logged step once in TensorBoard, also where the first attempt logged past the
    # checkpoint the rerun resumed from.
    assert tensorboard_steps(storage / "sft", "train/loss") == list(range(5, 121, 5))
    state = _state(storage)
    assert all(s["status"] == "succeeded" for s in state.values()), state
    registry = Registry(storage).entries()
    assert set(registry) == {"sft", "dpo"}
    assert state["dpo"]["checkpoint"]["path"] == registry["dpo"].path
    assert registry["dpo"].parent == registry["sft"].path
    status = subprocess.run(
        [str(BIN / "rayalign"), "pipeline", "status", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status.returncode == 0 and "dpo" in status.stdout and "succeeded" in status.stdout

    # One checkpoint served, the other published on demand by name and removed, Ctrl-C
    # (one `rayalign serve` for all of it: each engine start costs most of a minute on
    # two cores). Serving every registered checkpoint, the default, is tested in
    # tests/serving (the same registry sync).
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = start_serve(storage, port, head_node, "--models", "dpo")
    try:
        _wait_for(lambda: served_models(port) == {"dpo"}, 300, "the endpoint", serve)
        assert _chat(url, "dpo").status_code == 200
        assert _chat(url, "sft").status_code == 404  # registered, not published

        args = ("--registry", str(storage), "--address", head_node.gcs)
        published = _rayalign("serve", "publish", "sft", *args, env=head_node.env)
        assert published.returncode == 0, published.stderr[-3000:]
        time.sleep(1.5)  # the ingress refreshes its model list every second
        assert served_models(port) == {"sft", "dpo"}
        reply = _chat(url, "sft")
        assert reply.status_code == 200, reply.text
        unknown = _rayalign("serve", "publish", "nope", *args, env=head_node.env)
        assert unknown.returncode == 2 and "'nope' is not registered" in unknown.stderr
        removed = _rayalign("serve", "remove", "sft", *args, env=head_node.env)
        assert removed.returncode == 0, removed.stderr[-3000:]
        time.sleep(1.5)
        assert served_models(port) == {"dpo"}

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


def _chat(url: str, model: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        timeout=60,
    )


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
