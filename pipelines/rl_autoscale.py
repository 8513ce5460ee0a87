"""Autoscaling of the rollout pool from each step's timings (`rollout.autoscale`)."""

from __future__ import annotations

from rayalign.rl_config import AutoscaleConfig


def wanted_pool_size(
    auto: AutoscaleConfig | None, size: int, generate_s: float, step_s: float
) -> int | None:
    """The pool size to ask for after a step, or None to leave it.

    One worker more when generation took more than `auto.generation_share` of the step,
    one fewer when it took less than half that share, within [min_workers, max_workers].
    """
    if auto is None:
        return None
    share = generate_s / max(step_s, 1e-9)
    if share > auto.generation_share and size < auto.max_workers:
        return size + 1
    if share < auto.generation_share / 2 and size > auto.min_workers:
        return size - 1
    return None
