"""Checkpoints and resume state of an RL run: state.json, the registry, result.json.

`state.json` names the last checkpoint (policy, optimizer and, for PPO, critic); a rerun
with the same `run.name` reads it and continues from that step. The run's folder is a
local path or a storage URI (`rayalign.storage`); state.json is written last, so a run
killed while saving resumes from the checkpoint before.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import ray

from rayalign import storage
from rayalign.registry import Registry, RegistryEntry
from rayalign.rl_config import PPOStageConfig


@dataclass
class RunState:
    """What a rerun resumes from (state.json).

    Attributes:
        step: steps finished and saved (0: a fresh run).
        checkpoint: the policy's HF directory at `step`.
        optimizer: the learners' optimizer state (`optimizer.pt` in the checkpoint).
        critic: the critic's HF directory (PPO only).
        rollout_workers: the run controller's wanted pool size at `step` (a resize made
            with `rayalign scale` outlives the restart).

    The rest a step depends on needs no saving: the data order and each prompt's
    sampling seed are functions of (run.seed, step) (`RLDriver.requests`), and the
    learners' RNG state travels in `optimizer.pt`.
    """

    step: int = 0
    checkpoint: str | None = None
    optimizer: str | None = None
    critic: str | None = None
    rollout_workers: int | None = None

    @classmethod
    def load(cls, run_dir: Path | str) -> RunState:
        try:
            return cls(**json.loads(storage.read_text(storage.join(run_dir, "state.json"))))
        except FileNotFoundError:
            return cls()

    def write(self, run_dir: Path | str) -> None:
        """Replace state.json atomically (a killed driver leaves the previous one)."""
        state = {k: v for k, v in asdict(self).items() if v is not None}
        storage.write_text(storage.join(run_dir, "state.json"), json.dumps(state))


def save_checkpoint(
    config: PPOStageConfig,
    learner,
    step: int,
    metrics: dict[str, float],
    rollout_workers: int | None = None,
) -> RegistryEntry:
    """Have rank 0 `learner` write checkpoint-{step}, record it (and the wanted pool size
    `rollout_workers`) in state.json and register it as `{run.name}-step-{step}` with
    `metrics`."""
    run_dir = config.run_dir
    path = storage.join(run_dir, f"checkpoint-{step:06d}")
    ray.get(learner.save.remote(path))
    RunState(
        step=step,
        checkpoint=path,
        optimizer=storage.join(path, "optimizer.pt"),
        critic=storage.join(path, "critic") if config.rl.algorithm == "ppo" else None,
        rollout_workers=rollout_workers,
    ).write(run_dir)
    entry = RegistryEntry(
        name=f"{config.run.name}-step-{step}",
        stage=config.rl.algorithm,
        kind="chat",
        path=path,
        parent=config.model.name_or_path,
        step=step,
        metrics=metrics,
    )
    Registry(storage.parent(run_dir)).register(entry)
    return entry


def register_final(config: PPOStageConfig, entry: RegistryEntry | None) -> RegistryEntry:
    """Register the last checkpoint under `run.name` with its held-out accuracy and write
    result.json. `entry` None (a rerun of a finished run) takes the registered last step."""
    registry = Registry(storage.parent(config.run_dir))
    if entry is None:
        entry = registry.get(f"{config.run.name}-step-{config.rl.steps}")
    final = RegistryEntry(**{**entry.__dict__, "name": config.run.name})
    if config.data.prompts_eval:
        from pipelines.evaluate import evaluate

        final.metrics = {
            **final.metrics,
            "heldout_accuracy": evaluate(final.path, config.data.prompts_eval).accuracy,
        }
    registry.register(final)
    storage.write_text(
        storage.join(config.run_dir, "result.json"), json.dumps(final.__dict__, indent=2)
    )
    return final
