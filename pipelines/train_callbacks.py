"""What each Ray Train worker of an offline stage adds to its HF trainer: checkpoints
reported to Ray Train, TensorBoard that survives resumes, and where an attempt resumes."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback

from rayalign import storage

logger = logging.getLogger(__name__)


class ReportCallback(TrainerCallback):
    """Reports each HF checkpoint to Ray Train (rank 0 uploads; every rank reports)."""

    def __init__(self) -> None:
        self.last_logs: dict[str, float] = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self.last_logs.update(
                {k: float(v) for k, v in logs.items() if isinstance(v, int | float)}
            )

    def on_save(self, args, state, control, **kwargs):
        import ray.train

        metrics = {**self.last_logs, "step": state.global_step}
        ckpt_dir = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        checkpoint = None
        if ray.train.get_context().get_world_rank() == 0 and ckpt_dir.is_dir():
            checkpoint = ray.train.Checkpoint.from_directory(str(ckpt_dir))
        ray.train.report(
            metrics,
            checkpoint=checkpoint,
            checkpoint_dir_name=f"checkpoint-{state.global_step:06d}",
        )


class ResumableTensorBoard(TensorBoardCallback):
    """HF's TensorBoard logging, with the steps an earlier attempt logged after the
    checkpoint this one resumes from cut away (`purge_step`): each step shows once.

    With the run in object storage the writer's files are local (`local_dir`); they are
    uploaded to `upload_to` at each checkpoint, before it is reported, so that a stopped
    attempt keeps the steps up to the checkpoint its rerun resumes from (and at the end,
    by the stage)."""

    def __init__(
        self, purge_step: int, local_dir: str | None = None, upload_to: str | None = None
    ) -> None:
        super().__init__()
        self.purge_step = purge_step
        self.local_dir = local_dir
        self.upload_to = upload_to

    def on_save(self, args, state, control, **kwargs):
        if self.upload_to and state.is_world_process_zero and self.tb_writer is not None:
            self.tb_writer.flush()
            storage.upload(self.local_dir, self.upload_to)

    def _init_summary_writer(self, args) -> None:
        if self._SummaryWriter is not None:
            self.tb_writer = self._SummaryWriter(
                log_dir=self.logging_dir, purge_step=self.purge_step
            )


def resume_dir(checkpoint) -> str | None:
    """The HF checkpoint directory to resume from, if Ray Train has one: on local storage
    the persisted directory itself, from object storage a copy on this node."""
    import pyarrow.fs as pafs

    if checkpoint is None:
        return None
    path = checkpoint.path
    if not isinstance(checkpoint.filesystem, pafs.LocalFileSystem):
        # Under its own name: a resumed final checkpoint is told apart by it.
        local = Path(tempfile.mkdtemp(prefix="rayalign-resume-")) / Path(path).name
        path = checkpoint.to_directory(str(local))
    return path if (Path(path) / "trainer_state.json").exists() else None


def resume_step(resume: str | None) -> int:
    if not resume:
        return 0
    return int(json.loads((Path(resume) / "trainer_state.json").read_text())["global_step"])


def record_attempt(run_dir: Path | str, resume: str | None, world_size: int) -> None:
    """Append which step this (re)start of the worker group begins at to attempts.jsonl."""
    step = resume_step(resume)
    if resume:
        logger.info(f"[rayalign] resuming from {resume} at step {step}")
    line = json.dumps({"time": time.time(), "start_step": step, "world_size": world_size})
    storage.append_text(storage.join(run_dir, "attempts.jsonl"), line + "\n")
