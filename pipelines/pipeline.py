"""`rayalign pipeline run`: every stage of a pipeline as a Ray job, in dependency order.

Each stage waits for the stages it lists in `after`, is submitted through the Ray Jobs
API (working directory, runtime env, auth token from the environment), has its logs
streamed with a `[stage]` prefix, and records its registered checkpoint in the pipeline
state (`<storage_path>/pipeline-<name>.json`). A failed stage stops its descendants;
other branches go on. Rerunning skips the stages that succeeded and resubmits the rest
under the same run names, so an interrupted stage resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from ray.job_submission import JobStatus

from pipelines.pipeline_config import PipelineConfig, StageSpec, substitute
from rayalign import storage
from rayalign.interrupts import stop_on_signals
from rayalign.registry import Registry

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]


class StageStatus(StrEnum):
    """Where a pipeline stage is (stored by value in the pipeline state file)."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    BLOCKED = "blocked"  # an ancestor failed
    INTERRUPTED = "interrupted"  # stopped by Ctrl-C; the next run resumes it


@dataclass
class StageState:
    """What the runner knows of one stage."""

    status: StageStatus = StageStatus.PENDING
    job_id: str | None = None
    attempts: int = 0
    started: float | None = None
    finished: float | None = None
    checkpoint: dict[str, Any] | None = (
        None  # the stage's {"registered", "path", "step", "metrics"}
    )
    message: str = ""


@dataclass
class PipelineState:
    stages: dict[str, StageState] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | str) -> PipelineState:
        try:
            raw = json.loads(storage.read_text(path))
        except FileNotFoundError:
            return cls()
        return cls(
            {
                k: StageState(**{**v, "status": StageStatus(v["status"])})
                for k, v in raw["stages"].items()
            }
        )

    def save(self, path: Path | str) -> None:
        stages = {k: asdict(v) for k, v in self.stages.items()}
        storage.write_text(path, json.dumps({"stages": stages}, indent=2))


def state_path(config: PipelineConfig) -> str:
    """The pipeline's state file, beside its runs (a local path or a storage URI)."""
    return storage.join(config.storage_path, f"pipeline-{config.name}.json")


def registered_checkpoint(storage_path: str, name: str) -> dict[str, Any] | None:
    """What stage `name` registered in the pipeline's registry: {"registered", "path",
    "step", "metrics"}, or None for a stage that registers no checkpoint (a `rayalign`
    command, a safety stage that only writes data)."""
    entry = Registry(storage_path).get(name)
    if entry is None:
        return None
    return {
        "registered": entry.name,
        "path": entry.path,
        "step": entry.step,
        "metrics": entry.metrics,
    }


def stage_entrypoint(
    spec: StageSpec, values: dict[str, str], storage_path: str, local: bool
) -> str:
    """The shell command of `spec`'s job, with ${...} references filled from `values`.

    A local cluster runs jobs on this machine: this interpreter, from this checkout. On a
    cluster the job's own `python` runs in the uploaded working directory.
    """
    python = sys.executable if local else "python"
    if spec.stage:
        args = [
            "-m",
            "pipelines",
            "train",
            spec.stage,
            "--config",
            spec.config,
            *(substitute(o, values) for o in spec.overrides),
            f"run.name={spec.name}",
            f"run.storage_path={storage_path}",
        ]
        if spec.stage != "ppo":  # the RL stage registers under its run name
            args.append(f"register_as={spec.name}")
    else:
        args = ["-m", "pipelines", *(substitute(a, values) for a in spec.rayalign)]
    command = shlex.join([python, *args])
    return f"cd {shlex.quote(str(REPO))} && {command}" if local else command


class PipelineRunner:
    """Runs a `PipelineConfig` against the Ray Jobs API at `address`."""

    def __init__(self, config: PipelineConfig, address: str, local: bool) -> None:
        from ray.job_submission import JobSubmissionClient

        self.config = config = config.active()  # optional stages only when included
        self.stages = config.ordered()
        self.client = JobSubmissionClient(address)
        self.local = local
        self.path = state_path(config)
        self.state = PipelineState.load(self.path)
        for s in self.stages:
            self.state.stages.setdefault(s.name, StageState())
        self._printed: dict[str, int] = {}

    # Building jobs ------------------------------------------------------------------

    def _values(self) -> dict[str, str]:
        values = {"storage": self.config.storage_path}
        for name, st in self.state.stages.items():
            if st.checkpoint:
                values[f"{name}.path"] = st.checkpoint["path"]
        return values

    def _submit(self, spec: StageSpec) -> None:
        st = self.state.stages[spec.name]
        runtime_env = dict(self.config.runtime_env)
        if not self.local:
            runtime_env.setdefault("working_dir", str(REPO))
        deadline = time.monotonic() + 120
        while True:
            try:
                command = stage_entrypoint(
                    spec, self._values(), self.config.storage_path, self.local
                )
                st.job_id = self.client.submit_job(
                    entrypoint=command,
                    runtime_env=runtime_env or None,
                    metadata={"rayalign_pipeline": self.config.name, "rayalign_stage": spec.name},
                )
                break
            except RuntimeError as err:
                # A cluster that just started has no job agent for a few seconds.
                if "No available agent" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(2)
        st.status, st.started, st.message = StageStatus.RUNNING, time.time(), ""
        st.attempts += 1
        self._printed[spec.name] = 0
        logger.info(f"[pipeline] {spec.name}: submitted job {st.job_id}")

    # The loop -----------------------------------------------------------------------

    def _stream(self, name: str, job_id: str) -> str:
        logs = self.client.get_job_logs(job_id)
        new = logs[self._printed.get(name, 0) :]
        for line in new.splitlines():
            logger.info(f"[{name}] {line}")
        self._printed[name] = len(logs)
        return logs

    def _finish(self, spec: StageSpec, status: JobStatus) -> None:
        st = self.state.stages[spec.name]
        self._stream(spec.name, st.job_id)
        st.finished = time.time()
        if status == JobStatus.SUCCEEDED:
            st.status = StageStatus.SUCCEEDED
            st.checkpoint = registered_checkpoint(self.config.storage_path, spec.name)
            took = st.finished - (st.started or st.finished)
            logger.info(f"[pipeline] {spec.name}: succeeded in {took:.0f}s")
            return
        st.status = StageStatus.FAILED
        st.message = f"job {st.job_id} {status.value.lower()}"
        logger.warning(f"[pipeline] {spec.name}: FAILED ({st.message}); see the log above")
        for child in self.config.children(spec.name):
            self.state.stages[child].status = StageStatus.BLOCKED
            self.state.stages[child].message = f"not run: {spec.name} failed"
            logger.info(f"[pipeline] {child}: not run, because {spec.name} failed")

    def run(self, poll_s: float = 2.0, on_poll: Callable[[], None] | None = None) -> bool:
        """Run every unfinished stage. Returns whether all succeeded. `on_poll` runs after
        each look at the jobs (the demo publishes finished stages from it)."""
        for s in self.stages:
            st = self.state.stages[s.name]
            if st.status == StageStatus.SUCCEEDED:
                logger.info(f"[pipeline] {s.name}: done earlier, skipped")
            elif st.status != StageStatus.PENDING:
                st.status, st.message = (
                    StageStatus.PENDING,
                    "",
                )  # failed, blocked or interrupted: again
        self.state.save(self.path)
        # Ctrl-C or SIGTERM (also when started with SIGINT ignored) stops the jobs.
        with stop_on_signals():
            try:
                while True:
                    running = [
                        s
                        for s in self.stages
                        if self.state.stages[s.name].status == StageStatus.RUNNING
                    ]
                    for s in running:
                        status = self.client.get_job_status(self.state.stages[s.name].job_id)
                        if status.is_terminal():
                            self._finish(s, status)
                        else:
                            self._stream(s.name, self.state.stages[s.name].job_id)
                    running = [
                        s
                        for s in self.stages
                        if self.state.stages[s.name].status == StageStatus.RUNNING
                    ]
                    done = {
                        n
                        for n, st in self.state.stages.items()
                        if st.status == StageStatus.SUCCEEDED
                    }
                    ready = [
                        s
                        for s in self.stages
                        if self.state.stages[s.name].status == StageStatus.PENDING
                        and set(s.after) <= done
                    ]
                    for s in ready[: max(0, self.config.max_parallel - len(running))]:
                        self._submit(s)
                    self.state.save(self.path)
                    if on_poll:
                        on_poll()
                    if not running and not ready:
                        break
                    time.sleep(poll_s)
            except KeyboardInterrupt:
                self._stop_running()
                raise
            finally:
                self.state.save(self.path)
        return all(st.status == StageStatus.SUCCEEDED for st in self.state.stages.values())

    def _stop_running(self) -> None:
        for name, st in self.state.stages.items():
            if st.status == StageStatus.RUNNING and st.job_id:
                logger.info(f"[pipeline] {name}: stopping job {st.job_id}")
                self.client.stop_job(st.job_id)
                st.status, st.message = StageStatus.INTERRUPTED, "stopped by Ctrl-C"


def status_table(config: PipelineConfig) -> str:
    """One line per stage: state, wall time, checkpoint and its metrics."""
    state = PipelineState.load(state_path(config))
    config = config.active()
    lines = [f"{'stage':<14} {'state':<12} {'time':>7}  checkpoint / metrics"]
    for s in config.ordered():
        st = state.stages.get(s.name, StageState())
        took = f"{st.finished - st.started:.0f}s" if st.started and st.finished else "-"
        detail = st.message
        if st.checkpoint:
            metrics = st.checkpoint.get("metrics", {})
            shown = ", ".join(f"{k}={v:.3g}" for k, v in sorted(metrics.items()) if k != "step")
            detail = f"{st.checkpoint['path']} (step {st.checkpoint.get('step')}) {shown}"
        lines.append(f"{s.name:<14} {st.status:<12} {took:>7}  {detail}")
    return "\n".join(lines)


def run_pipeline(config: PipelineConfig, address: str | None = None) -> bool:
    """Run `config` on the cluster at `address`, or on a local cluster started (and shut
    down) for it. Returns whether every stage succeeded."""
    from rayalign.cluster import local_head_node

    if address is not None:
        ok = PipelineRunner(config, address, local=False).run()
    else:
        # Stage paths are resolved here, where the jobs also run.
        config = config.model_copy(update={"storage_path": storage.resolve(config.storage_path)})
        with local_head_node() as head:
            logger.info(f"[pipeline] started a local Ray cluster (jobs API {head.jobs})")
            ok = PipelineRunner(config, head.jobs, local=True).run()
    print(status_table(config), flush=True)
    return ok
