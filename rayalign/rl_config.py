"""Typed config of the RL stage (PPO, GRPO, RLOO). Defaults follow the field's."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from rayalign.config import LoraConfig, ModelConfig, RunConfig, Source, Strict


class RLData(Strict):
    prompts: Source = Field(
        description="Training prompts: a `prompt` column and an optional `ground_truth` "
        "(prompts_train.jsonl, or any dataset source with a column mapping)."
    )
    prompts_eval: Source | None = Field(
        None, description="Held-out prompts (split 'test' of a dataset) for exact-match accuracy."
    )


class AutoscaleConfig(Strict):
    min_workers: int = Field(1, ge=1, description="Fewest rollout workers.")
    max_workers: int = Field(2, ge=1, description="Most rollout workers.")
    generation_share: float = Field(
        0.6,
        gt=0,
        lt=1,
        description="Grow the pool when generation takes more than this share of a step.",
    )


class RolloutConfig(Strict):
    num_workers: int = Field(1, ge=1, description="vLLM generation workers at start.")
    cpus_per_worker: float = Field(1.0, gt=0, description="Logical CPUs per generation worker.")
    gpus_per_worker: float = Field(
        0.0, ge=0, description="GPUs per generation worker (1 on GPU clusters)."
    )
    custom_resources: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "Custom Ray resources per worker, e.g. {rollout: 1} to place generation workers on "
            "the cluster's rollout nodes (see cluster.yaml)."
        ),
    )
    max_model_len: int = Field(256, ge=16, description="Longest prompt + completion in the engine.")
    chunk_size: int = Field(8, ge=1, description="Prompts per work item handed to a worker.")
    weight_transport: Literal["collective", "object_store"] = Field(
        "collective",
        description=(
            "How new weights reach rollout workers that are not colocated with a learner: "
            "broadcast by learner rank 0 over a torch.distributed group of its own (gloo on "
            "CPU, NCCL on GPU) in buckets, or read from rank 0's export in Ray's object "
            "store. A failed broadcast falls back to the object store for that sync."
        ),
    )
    autoscale: AutoscaleConfig | None = Field(
        None, description="Grow/shrink the pool by itself when set."
    )


class RemoteRewardConfig(Strict):
    """A reward model served over HTTP: rayalign's `POST /v1/score` or a server speaking it."""

    base_url: str = Field(
        description="The server's base URL including /v1, e.g. http://10.0.0.5:8000/v1."
    )
    model: str = Field(description="The served reward model's name.")
    weight: float = Field(1.0, description="Weight of its score in the reward sum.")
    api_key_env: str | None = Field(
        None, description="Environment variable holding the server's API key (Bearer)."
    )
    timeout_s: float = Field(30.0, gt=0, description="Per-request timeout.")
    max_retries: int = Field(
        3, ge=0, description="Retries of a timeout, dropped connection, 429 or 5xx."
    )
    retry_budget_s: float = Field(
        120.0, gt=0, description="The most one scoring request may take, retries included."
    )
    concurrency: int = Field(4, ge=1, description="Requests in flight at once.")


class RewardsConfig(Strict):
    reward_model: str | None = Field(
        None, description="Reward-model checkpoint (the reward_model stage), or none."
    )
    reward_model_weight: float = Field(1.0, description="Weight of the learned reward.")
    functions: dict[str, float] = Field(
        default_factory=lambda: {"exact_match": 1.0},
        description=(
            "Reward functions and their weights: a built-in name (exact_match, "
            "contains_answer) or any importable 'package.module:function' with TRL's "
            "reward_funcs signature f(prompts, completions, completion_ids, **columns) -> "
            "list[float | None], called by keyword with the prompt dataset's other columns. "
            "Resolved and checked on the driver before any actor starts."
        ),
    )
    remote: RemoteRewardConfig | None = Field(
        None, description="A reward model reached over HTTP, added to the sum with its weight."
    )
    num_scorers: int = Field(1, ge=1, description="RewardScorer actors sharing each batch.")
    cpus_per_scorer: float = Field(0.5, gt=0, description="Logical CPUs per RewardScorer.")
    gpus_per_scorer: float = Field(
        0.0, ge=0, description="GPUs per RewardScorer (a large reward model on GPU clusters)."
    )
    custom_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources per scorer, e.g. {learner: 0.1} to place them by node.",
    )

    @model_validator(mode="after")
    def _something_scores(self) -> RewardsConfig:
        if not (self.functions or self.reward_model or self.remote):
            raise ValueError("rewards: set functions, a reward_model or a remote reward model")
        return self


class ReferenceActorConfig(Strict):
    num_cpus: float = Field(0.5, gt=0, description="Logical CPUs of the ReferencePolicy actor.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs of the ReferencePolicy actor.")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="Weights dtype of the frozen reference; default: model.dtype."
    )
    custom_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources of the reference actor, e.g. {learner: 0.1}.",
    )


class LearnerConfig(Strict):
    num_learners: int = Field(
        1,
        ge=1,
        description="Data-parallel learner actors under torch DDP (gloo on CPU, NCCL on GPU).",
    )
    cpus_per_learner: float = Field(1.0, gt=0, description="Logical CPUs per learner.")
    gpus_per_learner: float = Field(0.0, ge=0, description="GPUs per learner.")
    custom_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources per learner, e.g. {learner: 1} for learner nodes.",
    )


class RLConfig(Strict):
    algorithm: Literal["ppo", "grpo", "rloo"] = Field(
        "grpo", description="ppo (critic + GAE), grpo or rloo."
    )
    steps: int = Field(20, ge=1, description="RL steps (one batch of prompts each).")
    prompts_per_step: int = Field(16, ge=1, description="Prompts sampled per step.")
    group_size: int = Field(
        4, ge=1, description="Completions per prompt (GRPO/RLOO groups; 1 is usual for PPO)."
    )
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    max_new_tokens: int = Field(16, ge=1, description="Longest completion.")
    learning_rate: float = Field(1e-6, gt=0, description="Policy learning rate.")
    critic_learning_rate: float = Field(1e-5, gt=0, description="Critic learning rate (PPO).")
    epochs: int = Field(1, ge=1, description="Passes over each step's batch.")
    minibatch_size: int = Field(
        16, ge=1, description="Sequences per optimizer step (all learners together)."
    )
    micro_batch_size: int | None = Field(
        None,
        ge=1,
        description=(
            "Sequences per forward/backward pass on each learner; gradients accumulate over "
            "a minibatch's micro-batches. Default: the whole minibatch at once."
        ),
    )
    lora: LoraConfig | None = Field(
        None,
        description=(
            "Train LoRA adapters on the policy (e.g. {r: 16}) instead of every weight; "
            "checkpoints hold the merged weights and the adapters (`adapter/`)."
        ),
    )
    lora_sync: Literal["auto", "adapters", "merged"] = Field(
        "auto",
        description=(
            "With `lora`: what the rollout engines get after each update. 'adapters': the "
            "adapter weights alone, into engines started with vLLM's LoRA support on the "
            "frozen base. 'merged': the merged weights, reloaded in place into plain "
            "engines. 'auto': adapters where the engines run on GPUs, merged on CPU, where "
            "vLLM's LoRA layers slow sampling down more than the smaller sync saves "
            "(bench/lora_sync.py)."
        ),
    )
    gradient_checkpointing: bool = Field(
        False,
        description=(
            "Recompute the policy's (and critic's) activations in the backward pass instead "
            "of keeping them: less learner memory for about one more forward pass "
            "(bench/learner_memory.py)."
        ),
    )
    old_logprobs: Literal["auto", "sampling", "recompute"] = Field(
        "auto",
        description=(
            "Where the ratio's pi_old comes from: the sampling log-probs vLLM returned (no "
            "extra pass; exact when learner and vLLM agree, as the mismatch gate checks) or a "
            "no-grad learner pass before the update (verl's recompute, for bf16 engines whose "
            "numerics differ). auto: sampling for one synchronous epoch, else recompute."
        ),
    )
    drop_uniform_groups: bool = Field(
        False,
        description=(
            "GRPO/RLOO: leave groups whose rewards are all equal (zero advantage) out of the "
            "update, as DAPO's dynamic sampling does; logged as dropped_groups."
        ),
    )
    clip_eps: float = Field(0.2, gt=0, description="PPO ratio clip.")
    clip_eps_high: float | None = Field(
        None, gt=0, description="Upper clip (DAPO clip-higher); default clip_eps."
    )
    dual_clip: float | None = Field(
        None, gt=1, description="Dual-clip constant c for negative advantages."
    )
    value_clip_eps: float | None = Field(
        0.2, gt=0, description="Critic value clip (PPO); none disables."
    )
    value_coef: float = Field(0.5, ge=0, description="Critic loss weight.")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount (PPO GAE).")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    kl_coef: float = Field(0.05, ge=0, description="KL penalty coefficient against the reference.")
    kl_estimator: Literal["k1", "k2", "k3"] = Field(
        "k3", description="KL estimator (Schulman's k1/k2/k3)."
    )
    kl_in: Literal["reward", "loss"] = Field(
        "reward",
        description="KL as a per-token reward penalty (PPO style) or a loss term (GRPO style).",
    )
    entropy_coef: float = Field(0.0, ge=0, description="Entropy bonus weight.")
    aggregation: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"] = Field(
        "token_mean", description="How per-token losses reduce to a scalar."
    )
    grpo_scale_std: bool = Field(True, description="GRPO: divide advantages by the group's std.")
    max_logprob_mismatch: float = Field(
        0.05,
        gt=0,
        description="Stop if |vLLM - learner| mean log-prob gap on the same tokens exceeds this.",
    )
    async_mode: bool = Field(
        False,
        alias="async",
        description="Overlap generation of step k+1 with the update of step k (1 step stale).",
    )
    importance_cap: float = Field(
        2.0, gt=0, description="Truncation of importance weights in async mode."
    )
    save_steps: int = Field(
        10, ge=1, description="Steps between checkpoints (registered as ppo-step-N)."
    )
    eval_steps: int = Field(10, ge=1, description="Steps between held-out evaluations.")
    eval_samples: int = Field(
        4, ge=1, description="Sampled completions per held-out prompt for the held-out reward."
    )

    model_config = {"extra": "forbid", "populate_by_name": True}


class PPOStageConfig(Strict):
    model: ModelConfig = Field(description="Initial policy (normally the SFT checkpoint).")
    reference: str | None = Field(
        None, description="Frozen reference; default: the initial policy."
    )
    critic: str | None = Field(
        None,
        description="Critic initialisation for PPO; default: the reward model, else the policy.",
    )
    data: RLData = Field(description="Prompts.")
    run: RunConfig = Field(description="Run name, storage and seed.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Generation pool.")
    rewards: RewardsConfig = Field(default_factory=RewardsConfig, description="Reward scorers.")
    reference_actor: ReferenceActorConfig = Field(
        default_factory=ReferenceActorConfig,
        description="Resources and dtype of the frozen reference (its checkpoint is `reference`).",
    )
    learner: LearnerConfig = Field(default_factory=LearnerConfig, description="Learners.")
    rl: RLConfig = Field(default_factory=RLConfig, description="Algorithm.")
    placement: Literal["auto", "colocated", "split"] = Field(
        "auto",
        description=(
            "colocated: each learner rank shares one process (its CPUs and GPU) with a vLLM "
            "engine and, on rank 0, the reference; they take turns, each with all the "
            "threads, and weights reach the engine in-process. split: one actor per role "
            "(learner, reference, generation workers), for clusters and async mode. Rollout "
            "workers beyond the colocated ones (rollout.num_workers, `rayalign scale`) join "
            "as split workers in both. auto: colocated unless rl.async."
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> PPOStageConfig:
        if self.rl.algorithm in ("grpo", "rloo") and self.rl.group_size < 2:
            raise ValueError(f"rl.group_size must be >= 2 for {self.rl.algorithm}")
        if self.rl.drop_uniform_groups and self.rl.algorithm == "ppo":
            raise ValueError("rl.drop_uniform_groups is for grpo/rloo (groups of samples), not ppo")
        if (
            self.rollout.autoscale
            and self.rollout.autoscale.min_workers > self.rollout.autoscale.max_workers
        ):
            raise ValueError("rollout.autoscale.min_workers must be <= max_workers")
        if self.placement == "colocated" and self.rl.async_mode:
            raise ValueError(
                "rl.async overlaps generation with the update, which a colocated learner and "
                "engine cannot do (they take turns): use placement: split"
            )
        if self.rl.lora_sync == "auto":  # resolved here: the learners see `rl` alone
            gpus = self.learner.gpus_per_learner if self.colocated else self.rollout.gpus_per_worker
            self.rl.lora_sync = "adapters" if gpus > 0 else "merged"
        return self

    @property
    def colocated(self) -> bool:
        """Whether learner ranks host the engines (placement, with auto resolved)."""
        if self.placement == "auto":
            return not self.rl.async_mode
        return self.placement == "colocated"

    @property
    def run_dir(self) -> Path | str:
        """The run's folder: a local Path, or a URI (`s3://...`) in object storage."""
        return self.run.run_dir
