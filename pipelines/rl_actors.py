"""The actor group of one RL run, built from its config: the rollout pool, reward scorers,
the frozen reference, the data-parallel learners and the named run controller.

`placement` decides how they share the machine: colocated (each learner rank holds a
vLLM engine, rank 0 the reference too, in one process) or split (an actor per role).

Every actor's resources, dtype and placement come from the config sections
(`rollout`, `rewards`, `reference_actor`, `learner`). The driver takes an `RLActors`,
so tests hand it light stand-ins instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray

from actors.policy_learner import PolicyLearner
from actors.reference_policy import ReferencePolicy
from actors.reward_scorer import RewardScorer
from actors.rollout_pool import RolloutPool
from actors.run_controller import start_controller
from pipelines.rl_checkpoint import RunState
from rayalign.rl_config import PPOStageConfig


@dataclass
class RLActors:
    """Handles of one run's actors.

    Attributes:
        pool: the elastic vLLM rollout pool (a local object owning GenerationWorkers).
        scorers: RewardScorer handles; each step's samples are split among them.
        reference: the ReferencePolicy handle; colocated, learner rank 0 (it holds the
            reference in its process).
        learners: PolicyLearner (colocated: ColocatedWorker) handles, rank 0 first (it
            exports weights and saves).
        controller: the run's named RunController handle.
    """

    pool: RolloutPool
    scorers: list[Any]
    reference: Any
    learners: list[Any]
    controller: Any

    def shutdown(self) -> None:
        self.pool.shutdown()
        unique = {
            id(a): a for a in [*self.scorers, self.reference, *self.learners, self.controller]
        }
        for actor in unique.values():
            ray.kill(actor)


def cpus_needed(config: PPOStageConfig) -> float:
    """Logical CPUs the run's actors ask for at start (for a local cluster's size).

    Colocated, each learner rank's actor holds its own CPUs, an engine's and (rank 0) the
    reference's, so the total is the same as split.
    """
    c = config
    workers = max(c.rollout.num_workers, c.learner.num_learners if c.colocated else 0)
    return (
        workers * c.rollout.cpus_per_worker
        + c.learner.num_learners * c.learner.cpus_per_learner
        + c.rewards.num_scorers * c.rewards.cpus_per_scorer
        + c.reference_actor.num_cpus
    )


def build_actors(config: PPOStageConfig, state: RunState) -> RLActors:
    """Start every actor of a run, resuming from `state` (policy, critic and optimizer)."""
    from pipelines.policy_sampling import build_pool

    policy_path = state.checkpoint or config.model.name_or_path
    critic = critic_path(config, state)
    controller = start_controller(
        config.run.name, state.rollout_workers or config.rollout.num_workers
    )
    if config.colocated:
        learners = build_colocated(config, policy_path, critic, state.optimizer, state.step)
        reference = learners[0]
        anchors = {f"colocated-{rank}": learner for rank, learner in enumerate(learners)}
    else:
        learners = build_learners(config, policy_path, critic, state.optimizer)
        reference = build_reference(config)
        anchors = {}
    pool = build_pool(
        policy_path,
        config.rollout,
        seed=config.run.seed,
        target=lambda: ray.get(controller.get_rollout_workers.remote()),
        dtype=config.model.dtype,
        anchors=anchors,
        source=learners[0] if config.rollout.weight_transport == "collective" else None,
        weight_version=state.step,
        lora=engine_lora(config),
    )
    return RLActors(
        pool=pool,
        scorers=build_scorers(config),
        reference=reference,
        learners=learners,
        controller=controller,
    )


def engine_lora(config: PPOStageConfig) -> dict[str, float] | None:
    """The adapters' shape for rollout engines that take updates as adapters
    (`rl.lora_sync: adapters`), or None for engines that reload whole weights."""
    lora = config.rl.lora
    if lora is None or config.rl.lora_sync != "adapters":
        return None
    return {"r": lora.r, "alpha": lora.alpha}


def build_scorers(config: PPOStageConfig) -> list[Any]:
    r = config.rewards
    cls = ray.remote(
        num_cpus=r.cpus_per_scorer,
        num_gpus=r.gpus_per_scorer,
        resources=r.custom_resources or None,
    )(RewardScorer)
    return [cls.remote(r) for _ in range(r.num_scorers)]


def build_reference(config: PPOStageConfig) -> Any:
    a = config.reference_actor
    cls = ray.remote(
        num_cpus=a.num_cpus, num_gpus=a.num_gpus, resources=a.custom_resources or None
    )(ReferencePolicy)
    return cls.remote(
        config.reference or config.model.name_or_path, dtype=a.dtype or config.model.dtype
    )


def critic_path(config: PPOStageConfig, state: RunState) -> str | None:
    """Where PPO's critic starts: the resumed one, else `critic`, else the reward model,
    else the policy. None for critic-free algorithms."""
    if config.rl.algorithm != "ppo":
        return None
    return state.critic or config.critic or config.rewards.reward_model or config.model.name_or_path


def build_colocated(
    config: PPOStageConfig,
    policy_path: str,
    critic: str | None,
    optimizer: str | None = None,
    weight_version: int = 0,
) -> list[Any]:
    """`learner.num_learners` ColocatedWorkers, rank 0 first: each holds a learner rank and
    a vLLM engine, rank 0 the reference too, with the CPUs of all it holds as its threads.
    `weight_version`: the step of `policy_path` (a resumed run's)."""
    from actors.colocated_worker import ColocatedWorker

    lc, ro, ref = config.learner, config.rollout, config.reference_actor

    def options(rank: int) -> dict[str, Any]:
        cpus = lc.cpus_per_learner + ro.cpus_per_worker + (ref.num_cpus if rank == 0 else 0)
        extra = {
            "reference_path": (config.reference or config.model.name_or_path)
            if rank == 0
            else None,
            "max_model_len": ro.max_model_len,
            "threads": max(1, int(cpus)),
            "weight_version": weight_version,
            "lora": engine_lora(config),
        }
        return {"num_cpus": cpus, "extra": extra}

    return build_learners(
        config, policy_path, critic, optimizer, learner_cls=ColocatedWorker, per_rank=options
    )


def build_learners(
    config: PPOStageConfig,
    policy_path: str,
    critic: str | None,
    optimizer: str | None = None,
    learner_cls: type = PolicyLearner,
    per_rank=None,
) -> list[Any]:
    """`learner.num_learners` data-parallel learners, rank 0 first.

    With several, rank 0 reports a free address on its own node and every rank joins the
    process group there. `optimizer` (a resumed run's optimizer.pt) is loaded on each.
    `per_rank(rank)` may give a rank's `num_cpus` and `extra` constructor arguments.
    """
    lc = config.learner
    learners = []
    for rank in range(lc.num_learners):
        own = per_rank(rank) if per_rank else {}
        cpus = own.get("num_cpus", lc.cpus_per_learner)
        cls = ray.remote(
            num_cpus=cpus,
            num_gpus=lc.gpus_per_learner,
            resources=lc.custom_resources or None,
        )(learner_cls)
        learners.append(
            cls.remote(
                policy_path,
                config.rl,
                critic_path=critic,
                rank=rank,
                world_size=lc.num_learners,
                seed=config.run.seed,
                dtype=config.model.dtype,
                **own.get("extra", {}),
            )
        )
    if lc.num_learners > 1:
        master = ray.get(learners[0].rendezvous_address.remote())
        ray.get([learner.init_process_group.remote(master) for learner in learners])
    if optimizer is not None:
        ray.get([learner.load_optimizer.remote(optimizer) for learner in learners])
    return learners
