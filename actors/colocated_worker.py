"""ColocatedWorker: a learner rank, a vLLM engine and (on rank 0) the frozen reference in
one process, sharing its CPUs (or GPU) and taking turns, as verl's hybrid engine and
TRL's colocate mode do.

Generation, the reference pass and the update run one after another in the same actor,
each with all of the actor's threads. New weights go from the learner's parameters into
the engine within the process (`sync_local`): no serialisation, no object store.
"""

from __future__ import annotations

from typing import Any

import torch

from actors.batches import PromptRequest, Sample, SamplingOptions
from actors.generation_worker import GenerationWorker
from actors.policy_learner import PolicyLearner
from actors.reference_policy import ReferencePolicy
from actors.weight_sync import export_weights
from rayalign.rl_config import RLConfig


class ColocatedWorker(PolicyLearner):
    """A PolicyLearner that also answers as a rollout worker and as the reference.

    Create with `ray.remote(ColocatedWorker)`; the rollout pool holds it as a worker it
    does not own (`RolloutPool(anchors=...)`), the driver as a learner rank.

    Args:
        model_path / rl / critic_path / rank / world_size / seed / dtype: as PolicyLearner.
        reference_path: checkpoint of the frozen reference to hold in-process, or None.
        max_model_len: the engine's longest prompt + completion.
        threads: torch threads for every phase (the actor's CPUs); None keeps torch's.
        weight_version: the version of the weights at `model_path` (a resumed run's step).
        lora: the adapters' {r, alpha} when the engine takes updates as adapters
            (`GenerationWorker`); None when it reloads whole weights.
        engine_kwargs: passed on to `vllm.LLM`.
    """

    def __init__(
        self,
        model_path: str,
        rl: RLConfig,
        critic_path: str | None = None,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        dtype: str = "float32",
        *,
        reference_path: str | None = None,
        max_model_len: int = 256,
        threads: int | None = None,
        weight_version: int = 0,
        lora: dict[str, float] | None = None,
        **engine_kwargs: Any,
    ) -> None:
        self.threads = threads
        self._use_threads()
        self.engine = GenerationWorker(
            model_path,
            name=f"colocated-{rank}",
            max_model_len=max_model_len,
            seed=seed,
            dtype=dtype,
            weight_version=weight_version,
            lora=lora,
            **engine_kwargs,
        )
        super().__init__(model_path, rl, critic_path, rank, world_size, seed, dtype)
        self.reference = ReferencePolicy(reference_path, dtype) if reference_path else None
        self._use_threads()  # engine start-up may have set its own

    def _use_threads(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)

    # -- as a rollout worker ---------------------------------------------------
    def generate(self, requests: list[PromptRequest], sampling: SamplingOptions) -> list[Sample]:
        return self.engine.generate(requests, sampling)

    def load_weights(self, weights: dict[str, torch.Tensor], version: int) -> int:
        return self.engine.load_weights(weights, version)

    def sync_local(self, version: int) -> int:
        """Load this rank's current policy weights into its own engine, in-process."""
        return self.engine.load_weights(
            export_weights(self.policy, adapters_only=self.sync_adapters), version
        )

    def ping(self) -> str:
        return self.engine.name

    # -- as the reference ------------------------------------------------------
    def reference_logprobs(
        self, prompt_ids: list[list[int]], completion_ids: list[list[int]], temperature: float = 1.0
    ) -> torch.Tensor:
        if self.reference is None:
            raise RuntimeError(f"rank {self.rank} holds no reference model")
        return self.reference.logprobs(prompt_ids, completion_ids, temperature)
