"""Typed configs of the safety stages: Constitutional AI (critique and revise) and RLAIF."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from rayalign.config import ModelConfig, RunConfig, Source, Strict
from rayalign.rl_config import RolloutConfig


class PromptData(Strict):
    prompts: Source = Field(
        description="Prompts to answer: {prompt, ground_truth?} rows from any dataset source."
    )
    prompts_eval: Source | None = Field(
        None,
        description="Held-out prompts: violation rate per checkable principle, before and after.",
    )
    max_prompts: int | None = Field(
        None, ge=1, description="Use only the first N prompts (none: all of them)."
    )


class SamplingConfig(Strict):
    samples_per_prompt: int = Field(
        1, ge=1, description="Policy answers sampled per prompt (RLAIF needs at least 2)."
    )
    temperature: float = Field(1.0, ge=0, description="Sampling temperature of the policy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling of the policy.")
    max_new_tokens: int = Field(32, ge=1, description="Longest policy answer, in tokens.")


class ChatModelSpec(Strict):
    """A model that critiques, revises or labels: an OpenAI-compatible endpoint or a checkpoint."""

    kind: Literal["endpoint", "checkpoint"] = Field(
        description=(
            "endpoint: any OpenAI-compatible server (rayalign serve, vLLM, a hosted API); "
            "checkpoint: a local HF checkpoint run on a vLLM generation worker."
        )
    )
    base_url: str | None = Field(
        None, description="Endpoint base URL including /v1, e.g. http://127.0.0.1:8000/v1."
    )
    model: str | None = Field(
        None, description="Model name at the endpoint (the registry name for rayalign serve)."
    )
    api_key_env: str | None = Field(
        "RAYALIGN_API_KEY",
        description="Environment variable holding the endpoint's API key (never put keys in files).",
    )
    path: str | None = Field(None, description="Checkpoint directory or HF id (kind checkpoint).")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature (0 = greedy).")
    max_tokens: int = Field(64, ge=1, description="Longest critique, revision or verdict.")
    concurrency: int = Field(8, ge=1, description="Requests in flight at once (endpoint).")
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout (endpoint).")
    max_retries: int = Field(
        5,
        ge=0,
        description=(
            "Retries of a request that timed out, lost its connection or got 429/5xx, with "
            "exponential backoff (or the server's Retry-After) (endpoint)."
        ),
    )
    retry_budget_s: float = Field(
        600.0,
        gt=0,
        description="Longest one request may take, all attempts and waits included (endpoint).",
    )

    @model_validator(mode="after")
    def _complete(self) -> ChatModelSpec:
        if self.kind == "endpoint" and not (self.base_url and self.model):
            raise ValueError("an endpoint model needs base_url and model")
        if self.kind == "checkpoint" and not self.path:
            raise ValueError("a checkpoint model needs path")
        return self

    @property
    def label(self) -> str:
        """How the model is named in provenance."""
        return f"{self.base_url}#{self.model}" if self.kind == "endpoint" else str(self.path)


class LabellerSpec(Strict):
    kind: Literal["programmatic", "model"] = Field(
        description=(
            "programmatic: score answers with the constitution's checks (or `function`); "
            "model: ask `model` which answer follows the principles better."
        )
    )
    function: str | None = Field(
        None,
        description=(
            "Programmatic scorer 'module:function' taking (prompt, answer) -> float; default: "
            "the fraction of the constitution's checked principles the answer follows."
        ),
    )
    model: ChatModelSpec | None = Field(None, description="The labeller model (kind model).")

    @model_validator(mode="after")
    def _complete(self) -> LabellerSpec:
        if self.kind == "model" and self.model is None:
            raise ValueError("a model labeller needs 'model'")
        return self


class FollowUp(Strict):
    """A training stage run on the generated split (its data.train is set for you)."""

    stage: Literal["sft", "dpo", "reward_model"] = Field(
        description="sft trains on the sft split; dpo and reward_model on the preference split."
    )
    config: str = Field(description="The stage's YAML config.")
    overrides: list[str] = Field(
        default_factory=list, description="KEY=VALUE overrides of that config."
    )


class SafetyStageConfig(Strict):
    """Fields both safety stages share."""

    model: ModelConfig = Field(description="The policy whose answers are critiqued or labelled.")
    data: PromptData = Field(description="Prompts, and held-out prompts for violation rates.")
    constitution: str = Field(description="Constitution YAML (configs/constitutions/*.yaml).")
    run: RunConfig = Field(description="Run name, storage and seed.")
    sampling: SamplingConfig = Field(
        default_factory=SamplingConfig, description="How the policy's answers are sampled."
    )
    rollout: RolloutConfig = Field(
        default_factory=RolloutConfig, description="The vLLM rollout pool that samples the policy."
    )
    then: list[FollowUp] = Field(
        default_factory=list,
        description="Stages trained on the generated data, in order (e.g. dpo).",
    )
    register_as: str | None = Field(
        None,
        description="Registry name of the last follow-up's checkpoint (default: the run name).",
    )
    eval_max_new_tokens: int = Field(
        16, ge=1, description="Longest greedy answer when measuring violation rates."
    )
    save_every: int = Field(
        64,
        ge=1,
        description="Answers revised (constitutional) or pairs labelled (rlaif) between "
        "appends to the run's data directory; a rerun continues after the last append.",
    )

    @property
    def run_dir(self) -> Path | str:
        """The run's folder: a local Path, or a URI (`s3://...`) in object storage."""
        return self.run.run_dir


class CriticSpec(ChatModelSpec):
    """Who critiques and revises: a model, or the constitution's own rules."""

    kind: Literal["endpoint", "checkpoint", "rules"] = Field(
        description=(
            "endpoint: any OpenAI-compatible server (rayalign serve, vLLM, a hosted API); "
            "checkpoint: a local HF checkpoint run on a vLLM generation worker; rules: no "
            "model, the constitution's checks critique and their repairs revise "
            "(pipelines.principle_checks.REPAIRS), for models too small to critique and as "
            "a baseline."
        )
    )

    @property
    def label(self) -> str:
        return "rules" if self.kind == "rules" else super().label


class ConstitutionalOptions(Strict):
    critic: CriticSpec = Field(description="The model (or rules) that critiques and revises.")
    revisions: int = Field(
        1,
        ge=1,
        description="Critique-revision rounds per answer, each with a freshly sampled principle.",
    )
    keep_unchanged: bool = Field(
        False, description="Keep rows whose revision equals the original answer (no signal)."
    )
    gate: bool = Field(
        True,
        description=(
            "Accept a revision only if the constitution's checks pass it: it follows the "
            "principle it was asked to fix (where that principle has a check) and every "
            "checked principle the answer before it followed. A rejected revision leaves "
            "the answer as it was and counts in the `rejected` metric."
        ),
    )


class ConstitutionalStageConfig(SafetyStageConfig):
    constitutional: ConstitutionalOptions = Field(description="Critique-and-revise options.")


class RLAIFOptions(Strict):
    labeller: LabellerSpec = Field(description="Who labels the pairs.")
    max_pairs_per_prompt: int = Field(
        2, ge=1, description="Distinct answer pairs labelled per prompt."
    )


class RLAIFStageConfig(SafetyStageConfig):
    rlaif: RLAIFOptions = Field(description="Labelling options.")

    @model_validator(mode="after")
    def _pairs(self) -> RLAIFStageConfig:
        if self.sampling.samples_per_prompt < 2:
            raise ValueError("rlaif needs sampling.samples_per_prompt >= 2 to form pairs")
        return self
