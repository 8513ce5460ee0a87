"""Session fixtures: a local Ray cluster, the tiny model and the arithmetic task data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rayalign.logs import configure as configure_logging  # noqa: E402

configure_logging()  # as the CLI does: progress lines on stdout, third-party noise off


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random `tiny` preset model directory, built once per session."""
    from rayalign.models.factory import init_model

    return init_model("tiny", tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="session")
def arithmetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Arithmetic task splits (small), built once per session."""
    from rayalign.data.tasks import build_task
    from rayalign.data.tasks.splits import write_task_data

    out = tmp_path_factory.mktemp("data") / "arithmetic"
    write_task_data(build_task("arithmetic"), out, seed=0, n_train=400, n_test=50)
    return out


def _start_local_ray():
    import ray

    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)


@pytest.fixture(scope="session")
def ray_local():
    """A private local Ray cluster (never a stray one), shut down at the end; a fresh one
    for each test directory (`pytest_runtest_setup`)."""
    import ray

    _start_local_ray()
    yield ray
    ray.shutdown()


_ray_directory: Path | None = None


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Each test directory that uses Ray gets a fresh cluster and driver.

    One driver living through the whole suite (an hour, hundreds of actors) once stopped
    receiving the GCS's actor-state notifications: its long poll stayed open while the
    GCS had published the Serve controller ALIVE, so `serve.start` waited forever in CI.
    Package-scoped fixtures (the serving endpoint) stay within one directory, so they
    never outlive their cluster.
    """
    global _ray_directory
    if "ray_local" not in item.fixturenames:
        return
    import ray

    directory = item.path.parent
    if ray.is_initialized() and _ray_directory not in (None, directory):
        ray.shutdown()
        _start_local_ray()
    _ray_directory = directory


# An arithmetic variant a random `small` model learns in 500 CPU steps at lr 5e-4: sums of
# operands 0..19 (400 distinct questions; 50 held out). Half the SFT answers are sentences
# ("The answer is 12."): SFT learns the sums (right answer in some format ~0.9) but exact
# match stays near half, room that the preference and RL stages, whose data and rewards
# want the bare number, are tested to recover.
EASY_ARITHMETIC = {"max_operand": 19, "ops": "+", "verbose_rate": 0.5}


@pytest.fixture(scope="session")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rayalign.models.factory import init_model

    return init_model("small", tmp_path_factory.mktemp("models") / "small", seed=0)


@pytest.fixture(scope="session")
def easy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rayalign.data.tasks import build_task
    from rayalign.data.tasks.splits import write_task_data

    out = tmp_path_factory.mktemp("data") / "easy"
    write_task_data(build_task("arithmetic", EASY_ARITHMETIC), out, seed=0, n_train=350, n_test=50)
    return out


@pytest.fixture(scope="session")
def easy_pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`easy_data`'s questions (same seed and counts) with eight wrong answers per question in
    the preference split: more contrast for the reward model and a 400-pair held-out set."""
    from rayalign.data.tasks import build_task
    from rayalign.data.tasks.splits import write_task_data

    out = tmp_path_factory.mktemp("data") / "easy-pairs"
    write_task_data(
        build_task("arithmetic", EASY_ARITHMETIC),
        out,
        seed=0,
        n_train=350,
        n_test=50,
        rejected_per_prompt=8,
    )
    return out


@pytest.fixture(scope="session")
def bare_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`easy_data`'s questions (same seed and counts) with every answer a bare number."""
    from rayalign.data.tasks import build_task
    from rayalign.data.tasks.splits import write_task_data

    out = tmp_path_factory.mktemp("data") / "bare"
    options = {**EASY_ARITHMETIC, "verbose_rate": 0.0}
    write_task_data(build_task("arithmetic", options), out, seed=0, n_train=350, n_test=50)
    return out


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Storage path shared by the session's stage runs (one registry)."""
    return tmp_path_factory.mktemp("runs")


def checkpoint_committed(run_dir: Path) -> bool:
    """Whether Ray Train has registered a checkpoint of the run (its manager's snapshot):
    a checkpoint directory alone may not be resumable yet."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(snapshot.get("latest_checkpoint_result"))


def stage_config(stage_name: str, overrides: list[str]):
    """Load configs/tiny/<stage>.yaml with test overrides through the real loader."""
    from pipelines.stage_registry import load_stage
    from rayalign.config import load_config

    root = Path(__file__).resolve().parents[1]
    stage = load_stage(stage_name)
    return stage, load_config(
        stage.config_cls, root / "configs" / "tiny" / f"{stage_name}.yaml", overrides
    )


@pytest.fixture(scope="session")
def sft_entry(ray_local, small_model, easy_data, runs_dir):
    """The SFT stage run once from the random `small` model; DPO/KTO/RM/RL start from it."""
    stage, config = stage_config(
        "sft",
        [
            f"model.name_or_path={small_model}",
            f"data.train={easy_data / 'sft_train.jsonl'}",
            "data.eval=null",
            f"data.prompts_eval={easy_data / 'prompts_test.jsonl'}",
            f"data.preference_eval={easy_data / 'preference_test.jsonl'}",
            f"run.storage_path={runs_dir}",
        ],
    )
    return stage.run(config)


@pytest.fixture(scope="session")
def rm_entry(sft_entry, easy_pairs, runs_dir):
    """The reward-model stage run once from the SFT checkpoint (PPO scores with it)."""
    stage, config = stage_config(
        "reward_model",
        [
            f"model.name_or_path={sft_entry.path}",
            f"data.train={easy_pairs / 'preference_train.jsonl'}",
            f"data.eval={easy_pairs / 'preference_test.jsonl'}",
            f"run.storage_path={runs_dir}",
        ],
    )
    return stage.run(config)


@pytest.fixture(scope="session")
def lora_sft_entry(sft_entry, bare_data, runs_dir):
    """LoRA SFT (r=16, adapters on every linear layer) from the SFT checkpoint on the
    bare-number answers: the format moves while the base weights stay frozen."""
    stage, config = stage_config(
        "sft",
        [
            f"model.name_or_path={sft_entry.path}",
            f"data.train={bare_data / 'sft_train.jsonl'}",
            "data.eval=null",
            f"data.prompts_eval={bare_data / 'prompts_test.jsonl'}",
            "data.preference_eval=null",
            "run.name=lora-sft",
            f"run.storage_path={runs_dir}",
            "lora={r: 16, alpha: 32}",
            "training.learning_rate=1e-3",
            "training.max_steps=40",
            "training.save_steps=20",
        ],
    )
    return stage.run(config)


def cli_driver_env() -> dict[str, str]:
    """The environment of a `python -m pipelines` driver attached to the session's cluster."""
    import ray

    return {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}


def start_cli_driver(args: list[str]) -> subprocess.Popen:
    """`python -m pipelines ARGS` as a driver of the session's cluster, in a session of its
    own (a signal reaches it alone), its stdout and stderr together as text."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines", *args],
        env=cli_driver_env(),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_cli_driver(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m pipelines ARGS` as a driver of the session's cluster, to its end."""
    return subprocess.run(
        [sys.executable, "-m", "pipelines", *args],
        env=cli_driver_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tensorboard_steps(run_dir: Path, tag: str) -> list[int]:
    """The steps of `tag` that TensorBoard shows: event files in the order written, each
    SessionLog.START (a writer's purge_step) dropping the events at or after its step."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps: list[int] = []
    for path in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            if event.HasField("session_log") and event.session_log.status == 1:  # START
                steps = [s for s in steps if s < event.step]
            steps += [event.step for v in event.summary.value if v.tag == tag]
    return steps


def cluster_processes(marker: str) -> list:
    """Processes of this session's Ray cluster (descendants of this process) whose command
    line contains `marker`, e.g. "RayTrainWorker": never another cluster's on the machine."""
    import psutil

    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if any(marker in part for part in process.cmdline()):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            pass  # exited meanwhile
    return found
