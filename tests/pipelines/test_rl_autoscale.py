"""Autoscaling decisions from a step's timings (pure)."""

from pipelines.rl_autoscale import wanted_pool_size
from rayalign.rl_config import AutoscaleConfig

AUTO = AutoscaleConfig(min_workers=1, max_workers=3, generation_share=0.6)


def test_grows_when_generation_dominates_and_shrinks_when_it_is_small():
    assert wanted_pool_size(AUTO, 1, generate_s=7.0, step_s=10.0) == 2
    assert wanted_pool_size(AUTO, 3, generate_s=7.0, step_s=10.0) is None  # at max
    assert wanted_pool_size(AUTO, 2, generate_s=2.0, step_s=10.0) == 1  # share 0.2 < 0.3
    assert wanted_pool_size(AUTO, 1, generate_s=2.0, step_s=10.0) is None  # at min
    assert wanted_pool_size(AUTO, 2, generate_s=4.0, step_s=10.0) is None  # in between
    assert wanted_pool_size(None, 2, generate_s=9.0, step_s=10.0) is None  # autoscale off
