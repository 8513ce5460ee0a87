"""Connecting a driver to Ray: the job's cluster, or a local one sized for the stage."""

from __future__ import annotations

import math
import os

import ray


def init_ray(min_cpus: float) -> None:
    """Attach to the cluster the driver runs in (a Ray job, RAY_ADDRESS, `ray start`),
    else start a local one declaring at least `min_cpus` logical CPUs.

    Ray schedules by logical CPUs: on a 2-core machine a stage whose actors ask for
    3 CPUs in total would wait forever, although they share the cores happily.
    """
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return
    try:
        ray.init(address="auto")
    except ConnectionError:
        ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(min_cpus)))
