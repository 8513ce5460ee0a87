"""RunController: a named actor through which a running RL job is steered.

`rayalign scale --run NAME --rollout-workers N` sets the wanted pool size here;
the driver reads it between chunks of work and reports its progress back.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import ray

NAMESPACE = "rayalign"


def controller_name(run_name: str) -> str:
    return f"controller:{run_name}"


@dataclass
class RunStatus:
    """Where a running RL job stands, as its driver last reported.

    Attributes:
        started: UNIX time the controller was created.
        wanted_rollout_workers: the pool size asked for (by `rayalign scale` or autoscaling).
        step: the last finished step (None before the first).
        rollout_workers: the pool's size at that step.
        metrics: that step's metrics (metrics.jsonl's row without the step).
    """

    started: float
    wanted_rollout_workers: int
    step: int | None = None
    rollout_workers: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)


class RunController:
    """The named actor one RL run is steered through; create with `start_controller`."""

    def __init__(self, rollout_workers: int) -> None:
        self.wanted = rollout_workers
        self.status = RunStatus(started=time.time(), wanted_rollout_workers=rollout_workers)

    def set_rollout_workers(self, n: int) -> int:
        if n < 1:
            raise ValueError("rollout workers must be >= 1")
        self.wanted = n
        return n

    def get_rollout_workers(self) -> int:
        return self.wanted

    def report(self, step: int, rollout_workers: int, metrics: dict[str, float]) -> None:
        """The driver's report after each step."""
        self.status.step = step
        self.status.rollout_workers = rollout_workers
        self.status.metrics = metrics

    def get_status(self) -> RunStatus:
        self.status.wanted_rollout_workers = self.wanted
        return self.status


def start_controller(run_name: str, rollout_workers: int):
    """Create (or replace) the run's named controller, findable from any driver."""
    name = controller_name(run_name)
    with contextlib.suppress(ValueError):
        ray.kill(ray.get_actor(name, namespace=NAMESPACE))
    return (
        ray.remote(num_cpus=0)(RunController)
        .options(name=name, namespace=NAMESPACE)
        .remote(rollout_workers)
    )


def find_controller(run_name: str):
    """The controller of a running job, or a clear error naming the run."""
    try:
        return ray.get_actor(controller_name(run_name), namespace=NAMESPACE)
    except ValueError:
        raise ValueError(f"no running RL job named {run_name!r} on this cluster") from None
