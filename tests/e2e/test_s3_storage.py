"""Every kind of stage and serving with their storage in object storage only: a local S3
server (moto), a `ray start` cluster, and drivers in scratch directories of their own.
SFT is interrupted and resumed from the bucket, DPO starts from SFT's checkpoint in the
bucket, GRPO from DPO's and resumes from its own checkpoint there, the registry lives
there too, and `rayalign serve` answers with GRPO's checkpoint from the bucket; no run
file reaches a local disk."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from rayalign import storage
from rayalign.cluster import free_port, local_head_node
from rayalign.registry import Registry
from tests.e2e.conftest import served_models
from tests.s3_server import s3_server

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RUNS = "s3://rayalign/runs"
INPUTS = "s3://rayalign/inputs"


@pytest.fixture(scope="module")
def bucket_cluster(tmp_path_factory, tiny_model, arithmetic_data):
    """(cluster env, driver env): the S3 server with the inputs uploaded, and a head node
    whose processes reach it; each side caches its copies in a directory of its own."""
    scratch = tmp_path_factory.mktemp("s3-cluster")
    with s3_server() as aws:
        storage.upload(tiny_model, f"{INPUTS}/tiny")
        storage.upload(arithmetic_data, f"{INPUTS}/data")
        env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
        env.update(aws)
        env.pop("RAY_ADDRESS", None)
        cluster_env = {**env, storage.CACHE_ENV: str(scratch / "cluster-cache")}
        with local_head_node(num_cpus=4, env=cluster_env) as head:
            driver_env = {**env, "RAY_ADDRESS": head.gcs}
            driver_env[storage.CACHE_ENV] = str(scratch / "driver-cache")
            yield driver_env


def _start(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """`command` in `cwd` (made), in a session of its own, its output together as text."""
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        command,
        env=env,
        cwd=cwd,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _driver(
    stage: str, overrides: list[str], env: dict[str, str], cwd: Path, config: str | None = None
) -> subprocess.Popen:
    """`rayalign train stage` with configs/tiny/<config or stage>.yaml and `overrides`."""
    command = [sys.executable, "-m", "pipelines", "train", stage]
    config_file = ROOT / f"configs/tiny/{config or stage}.yaml"
    return _start([*command, "--config", str(config_file), *overrides], env, cwd)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return out


def _committed(run: str) -> str | None:
    """The checkpoint Ray Train last committed to the bucket, if any."""
    try:
        snapshot = json.loads(storage.read_text(f"{run}/checkpoint_manager_snapshot.json"))
        return snapshot["latest_checkpoint_result"]["checkpoint_dir_name"]
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return None


def test_sft_dpo_grpo_resume_from_the_bucket_and_serve_answers_from_it(bucket_cluster, tmp_path):
    env = bucket_cluster
    sft = [
        f"model.name_or_path={INPUTS}/tiny",
        f"data.train={INPUTS}/data/sft_train.jsonl",
        "data.eval=null",
        f"data.prompts_eval={INPUTS}/data/prompts_test.jsonl",
        "data.preference_eval=null",
        f"run.storage_path={RUNS}",
        "run.name=sft-s3",
        # Long enough after the first checkpoint that the SIGTERM, which the driver turns
        # into an abort of the workers, lands before the last step: with 40 steps a fast
        # machine finished and committed `final` first (CI, stop 32).
        "training.max_steps=200",
        "training.global_batch_size=20",
        "training.save_steps=20",
        "training.logging_steps=10",
        "resources.cpus_per_worker=1",
    ]
    run = f"{RUNS}/sft-s3"
    first = _driver("sft", sft, env, tmp_path / "first")
    deadline = time.time() + 300
    while _committed(run) is None:
        assert first.poll() is None and time.time() < deadline, "no checkpoint reached the bucket"
        time.sleep(0.2)
    first.send_signal(signal.SIGTERM)
    out = _finish(first)
    assert first.returncode == 143, out[-3000:]
    kept = _committed(run)
    assert kept.startswith("checkpoint-"), f"interrupted after the last step: {kept}"
    assert f"[sft] interrupted: kept {run}/{kept}" in out, out[-3000:]

    second = _driver("sft", sft, env, tmp_path / "second")  # another directory, same bucket
    out = _finish(second)
    assert second.returncode == 0, out[-3000:]
    attempts = [json.loads(x) for x in storage.read_text(f"{run}/attempts.jsonl").splitlines()]
    assert attempts[-1]["start_step"] == int(kept.split("-")[-1]) > 0
    entry = Registry(RUNS).get("sft-s3")
    assert entry.path == f"{run}/final" and entry.step == 200
    assert "heldout_accuracy" in entry.metrics  # measured by the worker that trained it
    assert storage.exists(f"{run}/final/model.safetensors")
    assert storage.list_names(f"{run}/tensorboard")

    dpo = [
        f"model.name_or_path={entry.path}",
        f"data.train={INPUTS}/data/preference_train.jsonl",
        "data.prompts_eval=null",
        "data.preference_eval=null",
        f"run.storage_path={RUNS}",
        "run.name=dpo-s3",
        "training.max_steps=4",
        "training.save_steps=4",
        "resources.cpus_per_worker=1",
    ]
    third = _driver("dpo", dpo, env, tmp_path / "third")
    out = _finish(third)
    assert third.returncode == 0, out[-3000:]
    registry = Registry(RUNS).entries()
    assert registry["dpo-s3"].parent == entry.path
    assert registry["dpo-s3"].path == f"{RUNS}/dpo-s3/final" and registry["dpo-s3"].step == 4

    # GRPO from DPO's checkpoint: two steps, then the same run to four, which resumes from
    # the checkpoint, optimizer and logs it left in the bucket.
    grpo = [
        f"model.name_or_path={registry['dpo-s3'].path}",
        f"data.prompts={INPUTS}/data/prompts_train.jsonl",
        "data.prompts_eval=null",
        f"run.storage_path={RUNS}",
        "run.name=grpo-s3",
        "rl.prompts_per_step=4",
        "rl.group_size=2",
        "rl.save_steps=2",
        "rl.eval_steps=2",
    ]
    for steps, cwd in ((2, "fourth"), (4, "fifth")):
        proc = _driver("ppo", [*grpo, f"rl.steps={steps}"], env, tmp_path / cwd, "grpo")
        out = _finish(proc)
        assert proc.returncode == 0, out[-3000:]
    assert "resuming at step 2 from s3://rayalign/runs/grpo-s3/checkpoint-000002" in out, out
    run = f"{RUNS}/grpo-s3"
    assert json.loads(storage.read_text(f"{run}/state.json"))["step"] == 4
    steps = [json.loads(x)["step"] for x in storage.read_text(f"{run}/metrics.jsonl").splitlines()]
    assert steps == [1, 2, 3, 4]
    assert storage.exists(f"{run}/checkpoint-000004/optimizer.pt")
    assert storage.list_names(f"{run}/tensorboard")
    grpo_entry = Registry(RUNS).get("grpo-s3")
    assert grpo_entry.path == f"{run}/checkpoint-000004" and grpo_entry.step == 4
    assert grpo_entry.parent == registry["dpo-s3"].path

    # Nothing of the runs on a local disk: the drivers' directories hold no run file.
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]

    # Served from the bucket's registry: the replica serves its node's copy.
    port = free_port()
    command = [str(BIN / "rayalign"), "serve", "--registry", RUNS, "--port", str(port)]
    command += ["--models", "grpo-s3", "--no-watch", "--set", "chat.max_model_len=128"]
    serve = _start(command, env, tmp_path)
    try:
        deadline, reply = time.time() + 300, None
        while reply is None or reply.status_code != 200:  # 404/503 while the engine starts
            assert serve.poll() is None and time.time() < deadline, "grpo-s3 never answered"
            time.sleep(1)
            with contextlib.suppress(httpx.HTTPError):
                reply = httpx.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    json={"model": "grpo-s3", "messages": [{"role": "user", "content": "1 + 1?"}]},
                    timeout=60,
                )
        assert reply.json()["choices"][0]["message"]["role"] == "assistant"
        assert served_models(port) == {"grpo-s3"}
    finally:
        serve.send_signal(signal.SIGINT)
        out = _finish(serve, timeout=120)
    assert serve.returncode == 130, out[-3000:]
