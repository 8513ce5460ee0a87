"""Constitutional AI, supervised phase: the policy answers, a critic critiques and revises.

    sample answers (vLLM rollout pool) -> for each round: sample a principle, ask the
    critic for a critique, then for a revision -> write (prompt, revision) as an SFT split
    and (prompt, revision over original) as a preference split, each row with its whole
    chain as provenance -> train the `then` stages on them

The critic is any OpenAI-compatible endpoint (our own `rayalign serve`, an external one)
or a local checkpoint. Run as `rayalign train constitutional --config FILE`.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

from pipelines.chat_models import ChatModel, build_chat_model
from pipelines.constitution import (
    Constitution,
    critique_messages,
    revision_messages,
)
from pipelines.safety_config import ConstitutionalStageConfig
from pipelines.safety_stage import (
    absolute_paths,
    provenance,
    run_safety_stage,
    sample_policy,
    write_split,
)
from pipelines.stage_registry import StageDefinition

logger = logging.getLogger(__name__)


@dataclass
class Chain:
    """One answer's way through critique and revision."""

    prompt_index: int
    original: str
    answer: str  # the latest revision
    steps: list[dict] = field(default_factory=list)  # {principle, critique, revision}


def critique_and_revise(
    critic: ChatModel,
    constitution: Constitution,
    prompts: list[list[dict]],
    chains: list[Chain],
    rounds: int,
    rng: random.Random,
) -> None:
    """Run `rounds` critique-revision rounds over every chain, batched per round."""
    for _ in range(rounds):
        principles = [rng.choice(constitution.principles) for _ in chains]
        critiques = critic.complete(
            [
                critique_messages(prompts[c.prompt_index], c.answer, p)
                for c, p in zip(chains, principles, strict=True)
            ]
        )
        revisions = critic.complete(
            [
                revision_messages(prompts[c.prompt_index], c.answer, p, crit)
                for c, p, crit in zip(chains, principles, critiques, strict=True)
            ]
        )
        for chain, p, crit, rev in zip(chains, principles, critiques, revisions, strict=True):
            chain.steps.append({"principle": p.name, "critique": crit, "revision": rev})
            if rev.strip():  # an empty revision keeps the answer it was given
                chain.answer = rev.strip()


def build_rows(
    config: ConstitutionalStageConfig,
    constitution: Constitution,
    critic: ChatModel,
    prompts: list[list[dict]],
    chains: list[Chain],
) -> tuple[list[dict], list[dict], dict[str, float]]:
    """SFT and preference rows from the chains; unchanged answers are dropped unless kept."""
    sft, preference = [], []
    unchanged = 0
    for chain in chains:
        if chain.answer == chain.original.strip():
            unchanged += 1
            if not config.constitutional.keep_unchanged:
                continue
        origin = provenance(
            config,
            constitution,
            critic=critic.label,
            principles=[s["principle"] for s in chain.steps],
            original=chain.original,
            chain=chain.steps,
        )
        revised = [{"role": "assistant", "content": chain.answer}]
        prompt = prompts[chain.prompt_index]
        sft.append({"messages": prompt + revised, "provenance": origin})
        if chain.answer != chain.original.strip():
            original = [{"role": "assistant", "content": chain.original}]
            preference.append(
                {"prompt": prompt, "chosen": revised, "rejected": original, "provenance": origin}
            )
    metrics = {
        "answers": float(len(chains)),
        "revised": float(len(chains) - unchanged),
        "unchanged": float(unchanged),
    }
    return sft, preference, metrics


def generate_revisions(
    config: ConstitutionalStageConfig, constitution: Constitution, prompts: list[list[dict]]
):
    """Sample, critique and revise; write the splits. Returns (splits, metrics)."""
    logger.info(f"[{config.run.name}] sampling {len(prompts)} prompts")
    answers = sample_policy(config, prompts)
    chains = [
        Chain(prompt_index=i, original=text, answer=text.strip())
        for i, texts in enumerate(answers)
        for text in texts
        if text.strip()
    ]
    critic = build_chat_model(config.constitutional.critic, config.rollout)
    try:
        logger.info(
            f"[{config.run.name}] {len(chains)} answers: {config.constitutional.revisions} "
            f"critique-revision round(s) with {critic.label}"
        )
        critique_and_revise(
            critic,
            constitution,
            prompts,
            chains,
            config.constitutional.revisions,
            random.Random(config.run.seed),
        )
        sft, preference, metrics = build_rows(config, constitution, critic, prompts, chains)
    finally:
        critic.close()
    if not sft:
        raise ValueError(
            f"{config.run.name}: the critic revised none of {len(chains)} answers; check the "
            "critic model (or set constitutional.keep_unchanged=true)"
        )
    splits = {"sft": write_split(config, "sft", sft)}
    if preference:
        splits["preference"] = write_split(config, "preference", preference)
    logger.info(
        f"[{config.run.name}] wrote {len(sft)} SFT rows and {len(preference)} preference rows "
        f"({int(metrics['unchanged'])} answers unchanged)"
    )
    return splits, metrics


def run_constitutional(config: ConstitutionalStageConfig):
    """The whole stage; returns the final checkpoint's registry entry (or the SFT dataset's)."""
    config = absolute_paths(config)  # the closures below see the resolved paths

    def generate(constitution: Constitution, prompts: list[list[dict]]):
        return generate_revisions(config, constitution, prompts)

    return run_safety_stage(config, "constitutional", generate, "sft")


STAGE = StageDefinition("constitutional", ConstitutionalStageConfig, run_constitutional)
