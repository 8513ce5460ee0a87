"""The RL stage: PPO, GRPO and RLOO as cooperating Ray actors.

One step reads like the algorithm (pipelines/rl_driver.py):

    generate -> score -> reference log-probs -> advantages -> update -> sync weights

The driver only moves data between actors (actors/): an elastic vLLM RolloutPool,
RewardScorers, a frozen ReferencePolicy and data-parallel PolicyLearners, built from the
config by pipelines/rl_actors.py, either colocated (learner, engine and reference in one
process per learner rank, taking turns) or split (an actor per role). Run as
`rayalign train ppo --config FILE`.
"""

from __future__ import annotations

import json

from pipelines.rl_actors import build_actors, cpus_needed
from pipelines.rl_checkpoint import RunState
from pipelines.rl_driver import RLDriver
from pipelines.rl_metrics import MetricsLog
from pipelines.rl_rewards import check_reward_functions
from pipelines.stage_registry import StageDefinition
from rayalign import storage
from rayalign.cluster import init_ray
from rayalign.registry import RegistryEntry
from rayalign.rl_config import PPOStageConfig


def run_rl(config: PPOStageConfig) -> RegistryEntry:
    """Run (or resume) an RL stage to its last step and register its checkpoints."""
    check_reward_functions(config)  # before any actor starts
    init_ray(cpus_needed(config))
    run_dir = config.run_dir  # a local folder or a URI in object storage
    storage.write_text(
        storage.join(run_dir, "config.json"),
        json.dumps(config.model_dump(mode="json", by_alias=True), indent=2),
    )
    state = RunState.load(run_dir)
    actors = build_actors(config, state)
    metrics = MetricsLog(
        run_dir, config.run.name, config.rl.steps, actors.controller, resume_step=state.step
    )
    try:
        return RLDriver(config, actors, state, metrics).run()
    except KeyboardInterrupt:
        kept = RunState.load(run_dir)
        metrics.info(
            f"interrupted: kept {kept.checkpoint} (step {kept.step}); rerun the same command"
            " to resume from it"
            if kept.checkpoint
            else "interrupted before the first checkpoint; a rerun starts at step 0"
        )
        raise
    finally:
        metrics.close()
        actors.shutdown()


STAGE = StageDefinition("ppo", PPOStageConfig, run_rl)
