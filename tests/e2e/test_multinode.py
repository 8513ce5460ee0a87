"""A three-node Ray cluster on this machine (a head and two `ray start` worker nodes, each
with its own temp dir and the custom resources `learner` and `rollout`): learners and
rollout workers land on the nodes their config names, two learners on two nodes take the
step one learner takes, and `rayalign scale` adds a worker on the other node mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from actors.batches import TrainBatch
from actors.policy_learner import PolicyLearner
from rayalign.cluster import local_head_node, local_worker_node
from rayalign.rl_config import PPOStageConfig, RLConfig
from tests.actors.test_policy_learner import _ragged_batch

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NODE_RESOURCES = {"learner": 1, "rollout": 1}


@pytest.fixture(scope="module")
def cluster():
    """(head, {name: node id}, env): the head (CPUs only) and worker nodes a and b."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    with (
        local_head_node(num_cpus=4, env=env) as head,
        local_worker_node(head, "a", 2, NODE_RESOURCES, env=env) as a,
        local_worker_node(head, "b", 2, NODE_RESOURCES, env=env) as b,
    ):
        yield head, {"a": a, "b": b}, {**env, "RAY_ADDRESS": head.gcs}


@pytest.fixture()
def driver(cluster):
    """This process as a driver of the three-node cluster; the session's local cluster is
    back afterwards for the tests that use it."""
    import ray

    from tests.conftest import _start_local_ray

    had_local = ray.is_initialized()
    if had_local:
        ray.shutdown()
    ray.init(address=cluster[0].gcs, log_to_driver=False)
    yield ray
    ray.shutdown()
    if had_local:
        _start_local_ray()


def _node_of(actor) -> str:
    import ray

    return ray.get(actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))


def _batch(learner: PolicyLearner, n: int = 7) -> TrainBatch:
    """n sequences of 1..4 completion tokens (uneven shards over two ranks) with value
    targets for the critic and the learner's own log-probs as the behaviour's."""
    batch = _ragged_batch(learner, n)
    g = torch.Generator().manual_seed(3)
    batch.returns = torch.randn(batch.mask.shape, generator=g) * batch.mask
    batch.old_values = torch.zeros_like(batch.mask)
    return batch


def test_two_learners_on_two_nodes_take_one_learners_step(driver, cluster, tiny_model, tmp_path):
    import ray

    from pipelines.rl_actors import build_learners

    _, nodes, _ = cluster
    # token_mean weighs tokens over the whole minibatch: 4 and 3 rows of unequal lengths
    # on the two ranks, micro-batches of 2 accumulated under DDP's no_sync.
    rl = dict(
        learning_rate=1e-3,
        minibatch_size=64,
        epochs=2,
        micro_batch_size=2,
        aggregation="token_mean",
        algorithm="ppo",
        kl_in="loss",
        kl_coef=0.1,
        entropy_coef=0.01,
    )
    config = PPOStageConfig.model_validate(
        {
            "model": {"name_or_path": str(tiny_model)},
            "data": {"prompts": "unused.jsonl"},
            "run": {"name": "dp", "storage_path": str(tmp_path)},
            "learner": {
                "num_learners": 2,
                "cpus_per_learner": 1,
                "custom_resources": {"learner": 1},
            },
            "rl": rl,
        }
    )
    learners = build_learners(config, str(tiny_model), critic=str(tiny_model))
    assert sorted(_node_of(learner) for learner in learners) == sorted(nodes.values())

    one = PolicyLearner(str(tiny_model), RLConfig(**rl), critic_path=str(tiny_model))
    for _ in range(2):  # the optimizer states stay equal too
        batch = _batch(one)
        per_rank = ray.get([learner.update.remote(batch) for learner in learners])
        expected = one.update(batch)
        for key in ("policy_loss", "value_loss", "grad_norm", "entropy", "kl_in_loss"):
            together = sum(m[key] for m in per_rank) / len(per_rank)  # as the driver averages
            assert together == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key
    weights = ray.get([learner.export_weights.remote() for learner in learners])
    for name, tensor in one.weights().items():
        torch.testing.assert_close(weights[0][name], tensor, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(weights[1][name], weights[0][name], atol=0, rtol=0)
    for learner in learners:
        ray.kill(learner)


def _rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _wait_for(run_dir: Path, driver: subprocess.Popen, pred, what: str) -> None:
    deadline = time.time() + 300
    while not any(pred(r) for r in _rows(run_dir)):
        assert driver.poll() is None, f"the run ended before {what}: {driver.stdout.read()[-3000:]}"
        assert time.time() < deadline, f"{what} never came"
        time.sleep(0.1)


def _scale(env: dict[str, str], workers: int) -> None:
    command = [str(BIN / "rayalign"), "scale", "--run", "spread", "--rollout-workers", str(workers)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_run_places_roles_by_resource_and_scales_onto_the_other_node(
    cluster, tiny_model, arithmetic_data, tmp_path
):
    from ray.util.state import list_actors

    head, nodes, env = cluster
    run_dir = tmp_path / "runs" / "spread"
    overrides = [
        f"model.name_or_path={tiny_model}",
        f"data.prompts={arithmetic_data / 'prompts_train.jsonl'}",
        "data.prompts_eval=null",
        f"run.storage_path={tmp_path / 'runs'}",
        "run.name=spread",
        "placement=split",
        "learner.num_learners=2",
        "learner.cpus_per_learner=1",
        "learner.custom_resources={learner: 1}",
        "rollout.custom_resources={rollout: 1}",
        "rollout.cpus_per_worker=1",
        "rollout.chunk_size=2",
        "rl.steps=5000",  # stopped by SIGTERM once the pool is back to one worker
        "rl.prompts_per_step=8",
        "rl.group_size=2",
        "rl.max_new_tokens=4",
        "rl.eval_steps=100",
        "rl.save_steps=100",
    ]
    before = {a.actor_id for a in list_actors(address=head.jobs, limit=1000)}
    command = [sys.executable, "-m", "pipelines", "train", "ppo"]
    command += ["--config", str(ROOT / "configs/tiny/grpo.yaml"), *overrides]
    run = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        _wait_for(run_dir, run, lambda r: r["step"] >= 1, "step 1")
        _scale(env, 2)
        _wait_for(run_dir, run, lambda r: r["rollout_workers_used"] == 2, "a step on two workers")
        _scale(env, 1)
        two = max(r["step"] for r in _rows(run_dir) if r["rollout_workers_used"] == 2)
        _wait_for(run_dir, run, lambda r: r["step"] > two + 2, "steps after the scale-down")
        run.send_signal(signal.SIGTERM)
        out, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 143, out[-3000:]
    rows = _rows(run_dir)
    used = [r["rollout_workers_used"] for r in rows]
    assert used[0] == 1.0 and 2.0 in used and used[-1] == 1.0, used
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    assert all(r["samples"] == 16 for r in rows)

    def placed(cls: str) -> list[str]:
        """Nodes of the run's actors of class `cls` (earlier tests' ones left out)."""
        actors = list_actors(address=head.jobs, filters=[("class_name", "=", cls)], limit=1000)
        return sorted(a.node_id for a in actors if a.actor_id not in before)

    # One learner on each learner node; the first rollout worker on one of them and the
    # one `rayalign scale` added on the other (each node holds one `rollout`).
    assert placed("PolicyLearner") == sorted(nodes.values())
    assert placed("GenerationWorker") == sorted(nodes.values())
