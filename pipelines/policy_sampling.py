"""Sample answers from a checkpoint through the vLLM rollout pool (the RL stages' pool)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from actors.batches import PromptRequest, SamplingOptions
from actors.rollout_pool import RolloutPool
from rayalign.rl_config import RolloutConfig


def build_pool(
    model_path: str,
    rollout: RolloutConfig | None = None,
    seed: int = 0,
    target: Callable[[], int | None] | None = None,
    dtype: str = "float32",
    anchors: dict | None = None,
    source: Any = None,
    weight_version: int = 0,
    lora: dict[str, float] | None = None,
) -> RolloutPool:
    """A RolloutPool of GenerationWorkers serving `model_path` in `dtype`, placed as
    `rollout` says; `target` (the RL run controller's wanted size) lets it grow or shrink
    while running. `anchors` are colocated learner ranks sampling as workers too; `source`
    (learner rank 0) broadcasts new weights to the other workers, if given.
    `weight_version` is the version of the weights at `model_path` (a resumed run's step):
    only samples of the learner's current version measure the vLLM/learner gap.
    `lora` ({r, alpha}) starts LoRA engines that take each update as adapters."""
    from actors.generation_worker import remote_generation_worker

    r = rollout or RolloutConfig()
    cls = remote_generation_worker(r.cpus_per_worker, r.gpus_per_worker, r.custom_resources)

    def make(name: str):
        return cls.remote(
            model_path,
            name=name,
            max_model_len=r.max_model_len,
            seed=seed,
            dtype=dtype,
            weight_version=weight_version,
            lora=lora,
        )

    return RolloutPool(
        make, r.num_workers, r.chunk_size, target=target, anchors=anchors, source=source
    )


def sample_texts(
    pool: RolloutPool,
    conversations: list[list[dict]],
    *,
    n: int,
    temperature: float,
    max_tokens: int,
    top_p: float = 1.0,
    seed: int | None = None,
) -> list[list[str]]:
    """`n` answers per conversation (`result[i][j]`: answer j to conversation i)."""
    requests = [PromptRequest(index=i, messages=c) for i, c in enumerate(conversations)]
    options = SamplingOptions(
        n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed
    )
    return [[s.text for s in samples] for samples in pool.generate(requests, options)]
