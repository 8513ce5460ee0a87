"""Where an RL run's numbers go: metrics.jsonl, eval.jsonl, TensorBoard, the run
controller (for `rayalign scale`) and one progress line per step.

A run in object storage writes its logs to a local folder, copied to the bucket at each
checkpoint and at the end (`rayalign.storage.LocalMirror`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from rayalign.storage import LocalMirror

log = logging.getLogger(__name__)


class MetricsLog:
    """Writes one RL run's step metrics and evaluations.

    Args:
        run_dir: the run's folder (metrics.jsonl, eval.jsonl, tensorboard/), local or a
            storage URI.
        run_name: prefix of the progress lines.
        steps: the run's last step, for "step N/steps".
        controller: the run's RunController handle, told each step's metrics.
        resume_step: the step the run (re)starts from. What an earlier attempt logged
            after it is cut away (it will be logged again), so every step appears once in
            metrics.jsonl, eval.jsonl and TensorBoard.
    """

    def __init__(
        self, run_dir: Path | str, run_name: str, steps: int, controller, resume_step: int = 0
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.files = LocalMirror(run_dir)
        self.run_dir = self.files.local
        self.run_name = run_name
        self.steps = steps
        self.controller = controller
        # A fresh start evaluates step 0 again; a resumed one logs from resume_step + 1.
        keep_through = resume_step if resume_step else -1
        self.files.pull("metrics.jsonl", "eval.jsonl")
        for name in ("metrics.jsonl", "eval.jsonl"):
            truncate_jsonl(self.run_dir / name, keep_through)
        # TensorBoard drops the events at or after purge_step that earlier files hold.
        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=keep_through + 1)

    def info(self, message: str) -> None:
        """A progress line, prefixed with the run's name."""
        log.info("[%s] %s", self.run_name, message)

    def record_eval(self, step: int, metrics: dict[str, float]) -> None:
        with open(self.run_dir / "eval.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")

    def log_step(
        self,
        step: int,
        metrics: dict[str, float],
        timings: dict[str, float],
        pool_size: int,
        workers_used: int,
    ) -> None:
        """One finished step: its metrics, phase timings (seconds) and the pool's size now
        and during generation (a resize can land mid-step)."""
        metrics = {**metrics, **{f"time/{k}": v for k, v in timings.items()}}
        # Per second of sampling, also when the samples were drawn ahead (async).
        sampling = timings.get("sampling", timings["generate"])
        metrics["tokens_per_s"] = metrics["tokens"] / max(sampling, 1e-9)
        metrics["rollout_workers"] = float(pool_size)
        metrics["rollout_workers_used"] = float(workers_used)
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        self.controller.report.remote(step, pool_size, metrics)
        acc = (
            f" held-out acc {metrics['heldout_accuracy']:.3f} reward {metrics['heldout_reward']:.3f}"
            if "heldout_accuracy" in metrics
            else ""
        )
        self.info(
            f"step {step}/{self.steps} reward {metrics['reward']:.3f} kl {metrics['kl']:.4f}"
            f" mismatch {metrics['logprob_mismatch']:.4f} workers {pool_size}{acc}"
            f" ({timings['step']:.1f}s)"
        )

    def push(self) -> None:
        """Copy the logs so far to the run's folder in storage (before a checkpoint is
        committed, so a resume from it finds them)."""
        self.writer.flush()
        self.files.push()

    def close(self) -> None:
        self.writer.close()
        self.files.close()


def truncate_jsonl(path: Path, keep_through: int) -> None:
    """Keep the rows of `path` whose "step" is at most `keep_through`, replacing the file
    atomically (a crash leaves the old one); a torn last line goes too."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # the half-written line of a killed run
        if row.get("step", 0) <= keep_through:
            kept.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    tmp.replace(path)
