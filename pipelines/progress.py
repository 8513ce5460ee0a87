"""Terminal progress and TensorBoard logging for training stages (rank 0 only)."""

from __future__ import annotations

import logging
import time

from transformers import TrainerCallback

logger = logging.getLogger(__name__)


def format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    minutes, sec = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{sec:02d}s" if hours else f"{minutes}m{sec:02d}s"


def progress_line(
    stage: str, step: int, total: int, loss: float | None, elapsed: float, width: int = 24
) -> str:
    """`[sft] [#####-----] 120/600 loss 0.531 eta 1m20s` for a step count."""
    frac = step / total if total else 0.0
    filled = int(width * frac)
    eta = elapsed / frac * (1 - frac) if frac > 0 else 0.0
    loss_text = f" loss {loss:.4f}" if loss is not None else ""
    return f"[{stage}] [{'#' * filled}{'-' * (width - filled)}] {step}/{total}{loss_text} eta {format_eta(eta)}"


class ProgressCallback(TrainerCallback):
    """Prints one progress line per logging step: a job log stays readable, unlike tqdm."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.start = time.time()
        self.first_step: int | None = None
        self.last_printed = -1

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.time()
        self.first_step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        if state.global_step == self.last_printed:
            return
        self.last_printed = state.global_step
        done = state.global_step - (self.first_step or 0)
        todo = state.max_steps - (self.first_step or 0)
        line = progress_line(self.stage, done, todo, float(logs["loss"]), time.time() - self.start)
        # Show absolute steps (a resumed run continues from its checkpoint's step).
        line = line.replace(f"{done}/{todo}", f"{state.global_step}/{state.max_steps}", 1)
        logger.info(line)
