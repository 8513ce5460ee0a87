"""Constitutional AI, supervised phase: the policy answers, a critic critiques and revises.

    sample answers (vLLM rollout pool) -> for each round: sample a principle, ask the
    critic for a critique, then for a revision -> write (prompt, revision) as an SFT split
    and (prompt, revision over original) as a preference split, each row with its whole
    chain as provenance -> train the `then` stages on them

The answers and every `save_every` finished chains are kept in `<run>/data/` as they
are made: a rerun after an interruption continues where the last attempt stopped.

The critic is any OpenAI-compatible endpoint (our own `rayalign serve`, an external one)
or a local checkpoint. Run as `rayalign train constitutional --config FILE`.
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass, field

from pipelines.chat_models import ChatModel, build_chat_model
from pipelines.constitution import (
    Constitution,
    critique_messages,
    revision_messages,
)
from pipelines.safety_config import ConstitutionalStageConfig
from pipelines.safety_stage import (
    Journal,
    absolute_paths,
    policy_answers,
    provenance,
    run_safety_stage,
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


def chain_rng(seed: int, chain_id: int) -> random.Random:
    """The principles chain `chain_id` draws, whatever batch it runs in (and on a rerun)."""
    return random.Random(f"{seed}:{chain_id}")


def critique_and_revise(
    critic: ChatModel,
    constitution: Constitution,
    prompts: list[list[dict]],
    chains: list[Chain],
    rounds: int,
    rngs: list[random.Random],
) -> None:
    """Run `rounds` critique-revision rounds over every chain, batched per round; chain
    i draws its principles from `rngs[i]`."""
    for _ in range(rounds):
        principles = [rng.choice(constitution.principles) for rng in rngs]
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
    critic: str,
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
            critic=critic,
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


def revise_all(
    config: ConstitutionalStageConfig,
    constitution: Constitution,
    prompts: list[list[dict]],
    chains: list[Chain],
) -> list[Chain]:
    """Every chain through its rounds, `config.save_every` chains at a time, each batch
    appended to `<run>/data/chains.jsonl` when done; chains found there (an earlier
    attempt's) are not revised again. Returns the finished chains in order."""
    journal = Journal(config, "chains.jsonl", len(chains), "answers revised")
    todo = journal.todo()
    if todo:
        options = config.constitutional
        critic = build_chat_model(options.critic, config.rollout)
        try:
            logger.info(
                f"[{config.run.name}] {sum(map(len, todo))} answers: {options.revisions} "
                f"critique-revision round(s) with {critic.label}"
            )
            for batch in todo:
                critique_and_revise(
                    critic,
                    constitution,
                    prompts,
                    [chains[i] for i in batch],
                    options.revisions,
                    [chain_rng(config.run.seed, i) for i in batch],
                )
                journal.add([{"id": i, "chain": asdict(chains[i])} for i in batch])
        finally:
            critic.close()
    return [Chain(**row["chain"]) for row in journal.ordered()]


def generate_revisions(
    config: ConstitutionalStageConfig, constitution: Constitution, prompts: list[list[dict]]
):
    """Sample, critique and revise; write the splits. Returns (splits, metrics).

    The policy's answers and each batch of finished chains are on disk as soon as they
    exist, so a rerun after an interruption (or a critic that stayed down) continues
    where the last attempt stopped.
    """
    options = config.constitutional
    settings = {
        "constitution": constitution.name,
        "critic": options.critic.label,
        "revisions": options.revisions,
    }
    answers = policy_answers(config, prompts, settings)
    chains = [
        Chain(prompt_index=i, original=text, answer=text.strip())
        for i, texts in enumerate(answers)
        for text in texts
        if text.strip()
    ]
    chains = revise_all(config, constitution, prompts, chains)
    label = options.critic.label
    sft, preference, metrics = build_rows(config, constitution, label, prompts, chains)
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
