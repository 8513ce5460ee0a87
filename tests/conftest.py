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

# -- parallel runs (pytest-xdist, `make test PYTEST_ARGS="-n 4 ..."`) -------------------------
# Off by default: on two cores two workers were slower than one (see the Makefile). Each
# worker runs its own Ray cluster. Groups of
# tests that share a fixture beyond one module stay on one worker, and the longest groups
# start first, so that the workers finish together.
PACKAGE_GROUPS = ("tests/serving",)  # one package-scoped endpoint for the directory
LONGEST_FIRST = (  # minutes each on two cores (pytest --durations)
    "tests/serving",
    "tests/pipelines/test_offline_stages.py",
    "tests/e2e/test_pipeline_run.py",
    "tests/pipelines/test_rl_stage.py",
    "tests/pipelines/test_safety_stages.py",
    "tests/e2e/test_serve_cli.py",
    "tests/pipelines/test_ray_train_ops.py",
    "tests/pipelines/test_rl_ops.py",
    "tests/pipelines/test_dataset_stages.py",
    "tests/pipelines/test_lora.py",
)


def _group(nodeid: str) -> str:
    """The scheduling group of a test: its directory's for PACKAGE_GROUPS, else its file."""
    path = nodeid.split("::", 1)[0]
    return next((g for g in PACKAGE_GROUPS if path.startswith(g + "/")), path)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the workers collect; the order is theirs
        rank = {g: i for i, g in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(_group(item.nodeid), len(rank)))  # stable


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """xdist's scope scheduling with this suite's groups as the scopes (xdist's own
    `xdist_group` marks rename node ids, which pytest 9 no longer allows)."""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid)

    return GroupScheduling(config, log)


def _session_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's temp root: shared by all xdist workers (each has its own basetemp
    below it), the basetemp itself in a plain run."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _once(tmp_path_factory, name: str, build, encode=str, decode=Path):
    """`build()` run once per session, whichever worker asks first; the others wait for it
    and read what it wrote (a failed build is retried by the next asker)."""
    from filelock import FileLock

    root = _session_root(tmp_path_factory) / "shared"
    root.mkdir(exist_ok=True)
    done = root / f"{name}.json"
    with FileLock(str(root / f"{name}.lock")):
        if done.exists():
            return decode(json.loads(done.read_text()))
        value = build()
        done.write_text(json.dumps(encode(value)))
        return value


def _entry_once(tmp_path_factory, name: str, build):
    from rayalign.registry import RegistryEntry

    return _once(
        tmp_path_factory, name, build, lambda e: dict(e.__dict__), lambda d: RegistryEntry(**d)
    )


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
    """The random `small` model the stage fixtures start from (one for all workers)."""
    from rayalign.models.factory import init_model

    root = _session_root(tmp_path_factory)
    return _once(
        tmp_path_factory, "small_model", lambda: init_model("small", root / "small", seed=0)
    )


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
    """Storage path shared by the session's stage runs, on every worker (one registry;
    run names are unique across the suite)."""
    path = _session_root(tmp_path_factory) / "runs"
    path.mkdir(exist_ok=True)
    return path


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
def sft_entry(ray_local, small_model, easy_data, runs_dir, tmp_path_factory):
    """The SFT stage run once from the random `small` model; DPO/KTO/RM/RL start from it."""
    return _entry_once(
        tmp_path_factory, "sft_entry", lambda: _run_sft(small_model, easy_data, runs_dir)
    )


def _run_sft(small_model, easy_data, runs_dir):
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
def rm_entry(sft_entry, easy_pairs, runs_dir, tmp_path_factory):
    """The reward-model stage run once from the SFT checkpoint (PPO scores with it)."""
    return _entry_once(
        tmp_path_factory, "rm_entry", lambda: _run_rm(sft_entry, easy_pairs, runs_dir)
    )


def _run_rm(sft_entry, easy_pairs, runs_dir):
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
def lora_sft_entry(sft_entry, bare_data, runs_dir, tmp_path_factory):
    """LoRA SFT (r=16, adapters on every linear layer) from the SFT checkpoint on the
    bare-number answers: the format moves while the base weights stay frozen."""
    return _entry_once(
        tmp_path_factory, "lora_sft_entry", lambda: _run_lora_sft(sft_entry, bare_data, runs_dir)
    )


def _run_lora_sft(sft_entry, bare_data, runs_dir):
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
