"""`rayalign pipeline run` as a user runs it, with every run in object storage: a local S3
server (moto), a `ray start --head` cluster reached by address, a driver in a scratch
directory of its own. The pipeline makes the base model and the data in the bucket, then
SFT → DPO → GRPO. It is stopped twice (SIGTERM during SFT, Ctrl-C during GRPO); each rerun
skips the finished stages and resumes the stopped one from its checkpoint in the bucket.
Then `rayalign serve` answers from the bucket's registry: one checkpoint served, another
published by name and removed, Ctrl-C. No run file reaches the driver's disk.

One test for all of it: each stage start costs tens of seconds on two cores, each served
engine most of a minute."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from rayalign import storage
from rayalign.cluster import free_port, local_head_node
from rayalign.registry import Registry
from tests.conftest import tensorboard_steps
from tests.e2e.conftest import HeadNode, served_models, start_serve
from tests.s3_server import s3_server

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
RUNS = "s3://rayalign/runs"
# The config's workload (16 prompts x 8 samples): about 0.5 s a step of the tiny model
# here, so that the Ctrl-C after step 2's checkpoint lands well before the last step
# (4-step runs of 4 x 2 samples took 0.15 s a step: a race on a faster machine).
GRPO_STEPS = 30


@pytest.fixture()
def bucket_head(tmp_path, monkeypatch):
    """The S3 server and a head node (job API included) whose processes reach it; the
    cluster and this side cache their copies in directories of their own."""
    with s3_server() as aws:
        env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
        env.update(aws)
        env.pop("RAY_ADDRESS", None)
        cluster_env = {**env, storage.CACHE_ENV: str(tmp_path / "cluster-cache")}
        monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "test-cache"))
        with local_head_node(num_cpus=4, env=cluster_env) as head:
            driver_env = {**env, storage.CACHE_ENV: str(tmp_path / "driver-cache")}
            yield HeadNode(head.jobs, head.gcs, driver_env)


def _pipeline() -> dict:
    tiny = ["training.save_steps=20", "data.preference_eval=null"]
    return {
        "name": "e2e",
        "storage_path": RUNS,
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
                    # Long enough to be stopped after its first checkpoint (step 20): on a
                    # fast machine 40 steps finished and committed `final` first (stop 32).
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
            {
                "name": "grpo",
                "stage": "ppo",
                "config": "configs/tiny/grpo.yaml",
                "after": ["dpo"],
                "overrides": [
                    "model.name_or_path=${dpo.path}",
                    "data.prompts=${storage}/data/prompts_train.jsonl",
                    "data.prompts_eval=null",
                    f"rl.steps={GRPO_STEPS}",
                    "rl.save_steps=2",
                    "rl.eval_steps=100",
                ],
            },
        ],
    }


def _state() -> dict:
    path = f"{RUNS}/pipeline-e2e.json"
    return json.loads(storage.read_text(path))["stages"] if storage.exists(path) else {}


def _committed(run: str) -> bool:
    """Whether Ray Train has registered a checkpoint of the run in the bucket (a checkpoint
    folder alone may not be resumable yet)."""
    try:
        snapshot = json.loads(storage.read_text(f"{run}/checkpoint_manager_snapshot.json"))
    except (FileNotFoundError, ValueError):
        return False
    return bool(snapshot.get("latest_checkpoint_result"))


def _rl_step_saved(run: str) -> int:
    try:
        return json.loads(storage.read_text(f"{run}/state.json"))["step"]
    except (FileNotFoundError, KeyError, ValueError):
        return 0


def _run(config: Path, head: HeadNode, cwd: Path) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    command = [str(BIN / "rayalign"), "pipeline", "run", "--config", str(config)]
    return subprocess.Popen(
        [*command, "--address", head.address],
        env=head.env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _stop_when(proc: subprocess.Popen, ready, what: str, sig: signal.Signals) -> str:
    """Send `sig` to `proc` once `ready()`; its output after it exits."""
    deadline = time.time() + 600
    while not ready():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    return out


def test_pipeline_in_a_bucket_stopped_twice_resumes_then_serve_publish_remove_ctrl_c(
    bucket_head, tmp_path
):
    head = bucket_head
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(_pipeline()))
    driver = tmp_path / "driver"

    # SIGTERM during SFT, after its first checkpoint reached the bucket.
    first = _run(config, head, driver)
    out = _stop_when(first, lambda: _committed(f"{RUNS}/sft"), "SFT's checkpoint", signal.SIGTERM)
    assert first.returncode == 143, out[-3000:]
    state = _state()
    assert state["base"]["status"] == state["data"]["status"] == "succeeded"
    assert state["sft"]["status"] == "interrupted" and state["dpo"]["status"] == "pending"

    # Ctrl-C during GRPO, after its second step's checkpoint reached the bucket.
    second = _run(config, head, driver)
    grpo_run = f"{RUNS}/grpo"
    out = _stop_when(second, lambda: _rl_step_saved(grpo_run) >= 2, "GRPO's step 2", signal.SIGINT)
    assert second.returncode == 130, out[-3000:]
    assert "[pipeline] base: done earlier, skipped" in out
    assert "[pipeline] data: done earlier, skipped" in out
    assert "[sft] " in out and "[dpo] " in out  # the jobs' logs were streamed
    state = _state()
    assert state["sft"]["status"] == state["dpo"]["status"] == "succeeded"
    assert state["grpo"]["status"] == "interrupted", state
    kept = _rl_step_saved(grpo_run)
    assert 2 <= kept < GRPO_STEPS, f"GRPO was not stopped mid-run: {kept}"

    third = _run(config, head, driver)
    out, _ = third.communicate(timeout=900)
    assert third.returncode == 0, out[-3000:]
    assert "[pipeline] sft: done earlier, skipped" in out
    assert "[pipeline] dpo: done earlier, skipped" in out
    resumed = f"resuming at step {kept} from {grpo_run}/checkpoint-{kept:06d}"
    assert resumed in out, out[-3000:]
    state = _state()
    assert all(s["status"] == "succeeded" for s in state.values()), state

    # SFT: resumed at an epoch boundary, each step trained and logged once.
    sft_run = f"{RUNS}/sft"
    attempts = [json.loads(x) for x in storage.read_text(f"{sft_run}/attempts.jsonl").splitlines()]
    assert attempts[0]["start_step"] == 0 and attempts[-1]["start_step"] >= 20
    final = json.loads(storage.read_text(f"{sft_run}/final/trainer_state.json"))
    assert final["epoch"] == pytest.approx(24.0)
    assert [h["step"] for h in final["log_history"] if "loss" in h] == list(range(5, 121, 5))
    # Each logged step once in TensorBoard, also where the first attempt logged past the
    # checkpoint the rerun resumed from.
    local_sft = Path(storage.local_copy(sft_run))
    assert tensorboard_steps(local_sft, "train/loss") == list(range(5, 121, 5))
    assert storage.exists(f"{sft_run}/final/model.safetensors")

    # GRPO: the rerun went on from the kept checkpoint, optimizer and logs.
    assert json.loads(storage.read_text(f"{grpo_run}/state.json"))["step"] == GRPO_STEPS
    rows = storage.read_text(f"{grpo_run}/metrics.jsonl").splitlines()
    assert [json.loads(x)["step"] for x in rows] == list(range(1, GRPO_STEPS + 1))
    assert storage.exists(f"{grpo_run}/checkpoint-{GRPO_STEPS:06d}/optimizer.pt")
    assert storage.list_names(f"{grpo_run}/tensorboard")

    registry = Registry(RUNS).entries()
    assert {"sft", "dpo", "grpo"} <= set(registry)
    assert registry["sft"].path == f"{sft_run}/final" and registry["sft"].step == 120
    assert "heldout_accuracy" in registry["sft"].metrics  # measured by the worker
    assert registry["dpo"].parent == registry["sft"].path
    assert state["dpo"]["checkpoint"]["path"] == registry["dpo"].path
    assert registry["grpo"].path == f"{grpo_run}/checkpoint-{GRPO_STEPS:06d}"
    assert registry["grpo"].parent == registry["dpo"].path

    status = subprocess.run(
        [str(BIN / "rayalign"), "pipeline", "status", "--config", str(config)],
        env=head.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status.returncode == 0 and "grpo" in status.stdout and "succeeded" in status.stdout
    # Nothing of the runs on the driver's disk.
    assert not [p for p in driver.rglob("*") if p.is_file()]

    # One checkpoint served from the bucket, another published on demand by name and
    # removed, Ctrl-C (one `rayalign serve` for all of it). Serving every registered
    # checkpoint, the default, is tested in tests/serving (the same registry sync).
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = start_serve(RUNS, port, head, "--models", "grpo")
    try:
        _wait_for(lambda: served_models(port) == {"grpo"}, 300, "the endpoint", serve)
        reply = _chat(url, "grpo")
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["role"] == "assistant"
        assert _chat(url, "sft").status_code == 404  # registered, not published

        args = ("--registry", RUNS, "--address", head.gcs)
        published = _rayalign("serve", "publish", "sft", *args, env=head.env)
        assert published.returncode == 0, published.stderr[-3000:]
        time.sleep(1.5)  # the ingress refreshes its model list every second
        assert served_models(port) == {"sft", "grpo"}
        reply = _chat(url, "sft")
        assert reply.status_code == 200, reply.text
        unknown = _rayalign("serve", "publish", "nope", *args, env=head.env)
        assert unknown.returncode == 2 and "'nope' is not registered" in unknown.stderr
        removed = _rayalign("serve", "remove", "sft", *args, env=head.env)
        assert removed.returncode == 0, removed.stderr[-3000:]
        time.sleep(1.5)
        assert served_models(port) == {"grpo"}

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
