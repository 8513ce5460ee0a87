"""Light stand-ins for the RL actors (no vLLM, no model): plain classes under `ray.remote`
that record what the driver asks of them, in order, in a shared `Recorder` actor.

A stand-in policy at weight version v gives every token the log-prob `logprob_at(v)`, so
the learner can tell from a batch's behaviour log-probs which weights sampled it.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import ray
import torch

from actors.batches import PromptRequest, Sample, SamplingOptions, ScoredBatch, TrainBatch

if TYPE_CHECKING:
    from pipelines.rl_actors import RLActors
    from pipelines.rl_checkpoint import RunState
    from rayalign.rl_config import PPOStageConfig, RLConfig


def logprob_at(version: int) -> float:
    return -0.1 * (version + 1)


def version_of(logprob: float) -> int:
    return round(-logprob / 0.1) - 1


@ray.remote(num_cpus=0)
class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def record(self, *event) -> None:
        self.events.append(event)

    def get(self) -> list[tuple]:
        return self.events


def _padded(rows: list[list[int]], value: float) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([[value] * len(r) + [0.0] * (width - len(r)) for r in rows])


class StandInWorker:
    """A GenerationWorker: completions of 1-3 tokens, log-probs telling its weight version."""

    def __init__(self, name: str, recorder, delay_s: float = 0.0) -> None:
        self.name, self.recorder, self.delay_s = name, recorder, delay_s
        self.weight_version = 0

    def generate(self, requests: list[PromptRequest], sampling: SamplingOptions) -> list[Sample]:
        ray.get(self.recorder.record.remote("generate", self.weight_version))
        time.sleep(self.delay_s)
        samples = []
        for req in requests:
            for j in range(sampling.n):
                ids = list(range(1 + (req.index + j) % 3))
                samples.append(
                    Sample(
                        index=req.index,
                        prompt_ids=[7, 8],
                        completion_ids=ids,
                        logprobs=[logprob_at(self.weight_version)] * len(ids),
                        text=str(len(ids)),
                        finish_reason="stop",
                        weight_version=self.weight_version,
                        worker=self.name,
                    )
                )
        return samples

    def load_weights(self, weights: dict, version: int) -> int:
        ray.get(self.recorder.record.remote("sync", version))
        self.weight_version = version
        return version

    def ping(self) -> str:
        return self.name


class StandInScorer:
    """A RewardScorer: reward 1 for an odd-length completion, else 0."""

    def __init__(self, recorder) -> None:
        self.recorder = recorder

    def score(self, prompts, completions: list[str], completion_ids, columns, conversational):
        ray.get(self.recorder.record.remote("score"))
        rewards = torch.tensor([float(int(c) % 2) for c in completions])
        return ScoredBatch(rewards=rewards, components={"exact_match": rewards.clone()})


class StandInReference:
    def __init__(self, recorder) -> None:
        self.recorder = recorder

    def logprobs(self, prompt_ids, completion_ids, temperature: float = 1.0) -> torch.Tensor:
        ray.get(self.recorder.record.remote("reference"))
        return _padded(completion_ids, -0.5)

    reference_logprobs = logprobs


class StandInLearner:
    """A PolicyLearner (same constructor) whose weight version counts its updates."""

    def __init__(
        self,
        model_path: str,
        rl: RLConfig,
        critic_path: str | None = None,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        dtype: str = "float32",
        recorder=None,
    ) -> None:
        self.rank, self.recorder = rank, recorder or ray.get_actor("rl-recorder")
        # "stand-in@N": the checkpoint of step N, whose weights are version N.
        self.version = int(model_path.partition("@")[2] or 0)
        ray.get(self.recorder.record.remote("learner_created", rank))

    def rendezvous_address(self) -> str:
        return f"rank-{self.rank}-node:1234"

    def init_process_group(self, master: str) -> None:
        ray.get(self.recorder.record.remote("join", self.rank, master))

    def logprobs(self, prompt_ids, completion_ids, temperature: float = 1.0) -> torch.Tensor:
        ray.get(self.recorder.record.remote("learner_logprobs"))
        return _padded(completion_ids, logprob_at(self.version))

    def values(self, prompt_ids, completion_ids) -> torch.Tensor:
        ray.get(self.recorder.record.remote("advantages"))
        return _padded(completion_ids, 0.25)

    def update(self, batch: TrainBatch) -> dict[str, float]:
        sampled = {version_of(row[0].item()) for row in batch.behaviour_logprobs}
        ray.get(
            self.recorder.record.remote(
                "update", self.rank, self.version, sorted(sampled), batch.advantages.tolist()
            )
        )
        # The real learner's gate: its own log-probs against vLLM's on the fresh samples.
        fresh = batch.fresh_rows().bool()
        gap = float("nan")
        if fresh.any():
            gap = (batch.behaviour_logprobs[fresh, 0] - logprob_at(self.version)).abs().max().item()
        self.version += 1
        return {"policy_loss": float(self.rank), "logprob_mismatch": gap}

    def export_weights(self) -> dict[str, torch.Tensor]:
        return {"w": torch.full((1,), float(self.version))}

    def save(self, path: str) -> str:
        os.makedirs(path, exist_ok=True)
        return path

    def load_optimizer(self, path: str) -> None:
        ray.get(self.recorder.record.remote("load_optimizer", self.rank, path))


def stand_in_actors(
    config: PPOStageConfig, state: RunState, recorder, delay_s: float = 0.0
) -> RLActors:
    """The actor group of `config`, resuming from `state`, with every role a stand-in (the
    real pool and controller). Generation workers take `delay_s` per chunk."""
    # Imported here, on the driver: each stand-in actor's process imports this module, and
    # the learner's modules bring transformers (9.1 s of imports per actor, 3.2 s without).
    from actors.rollout_pool import RolloutPool
    from actors.run_controller import start_controller
    from pipelines.rl_actors import RLActors, build_learners

    controller = start_controller(config.run.name, config.rollout.num_workers)
    worker = ray.remote(num_cpus=0)(StandInWorker)
    pool = RolloutPool(
        lambda name: worker.remote(name, recorder, delay_s),
        config.rollout.num_workers,
        config.rollout.chunk_size,
        target=lambda: ray.get(controller.get_rollout_workers.remote()),
    )
    return RLActors(
        pool=pool,
        scorers=[
            ray.remote(num_cpus=0)(StandInScorer).remote(recorder)
            for _ in range(config.rewards.num_scorers)
        ],
        reference=ray.remote(num_cpus=0)(StandInReference).remote(recorder),
        learners=build_learners(
            config,
            f"stand-in@{state.step}",
            None,
            state.optimizer,
            learner_cls=StandInLearner,
        ),
        controller=controller,
    )
