"""Constitutional AI, supervised phase: the policy answers, a critic critiques and revises.

    sample answers (vLLM rollout pool) -> for each round: sample a principle, ask the
    critic for a critique, then for a revision; keep the revision if the constitution's
    checks pass it -> write (prompt, revision) as an SFT split
    and (prompt, revision over original) as a preference split, each row with its whole
    chain as provenance -> train the `then` stages on them

The answers and every `save_every` finished chains are kept in `<run>/data/` as they
are made: a rerun after an interruption continues where the last attempt stopped.

The critic is any OpenAI-compatible endpoint (our own `rayalign serve`, an external one),
a local checkpoint, or the constitution's rules (checks critique, repairs revise). Run as
`rayalign train constitutional --config FILE`.
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass, field
from typing import Protocol

from pipelines.chat_models import ChatModel, build_chat_model
from pipelines.constitution import (
    Constitution,
    Principle,
    critique_messages,
    revision_messages,
)
from pipelines.principle_checks import REPAIRS, get_check
from pipelines.safety_config import ConstitutionalStageConfig, CriticSpec
from pipelines.safety_journal import Journal
from pipelines.safety_stage import (
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


class Critic(Protocol):
    label: str

    def critique_and_revise(
        self, prompts: list[list[dict]], answers: list[str], principles: list[Principle]
    ) -> tuple[list[str], list[str]]:
        """A critique and a revision of each answer under its principle, in order."""
        ...

    def close(self) -> None: ...


class ModelCritic:
    """A chat model asked for a critique, then for a revision, as in the paper."""

    def __init__(self, chat: ChatModel) -> None:
        self.chat, self.label = chat, chat.label

    def critique_and_revise(
        self, prompts: list[list[dict]], answers: list[str], principles: list[Principle]
    ) -> tuple[list[str], list[str]]:
        critiques = self.chat.complete(
            [critique_messages(*x) for x in zip(prompts, answers, principles, strict=True)]
        )
        revisions = self.chat.complete(
            [
                revision_messages(*x)
                for x in zip(prompts, answers, principles, critiques, strict=True)
            ]
        )
        return critiques, revisions

    def close(self) -> None:
        self.chat.close()


class RulesCritic:
    """No model: a principle's check critiques and its repair revises. An answer that
    follows the principle, or breaks one that has no repair, is left as it is."""

    label = "rules"

    def critique_and_revise(
        self, prompts: list[list[dict]], answers: list[str], principles: list[Principle]
    ) -> tuple[list[str], list[str]]:
        critiques, revisions = [], []
        for prompt, answer, principle in zip(prompts, answers, principles, strict=True):
            text = user_text(prompt)
            if principle.check is None or get_check(principle.check)(text, answer):
                critiques.append(f"The response follows {principle.name}.")
                revisions.append(answer)
                continue
            repair = REPAIRS.get(principle.check)
            revision = repair(text, answer) if repair else None
            critiques.append(
                f"The response breaks {principle.name}"
                + ("." if revision is not None else "; no rule can revise it.")
            )
            revisions.append(answer if revision is None else revision)
        return critiques, revisions

    def close(self) -> None:
        pass


def build_critic(spec: CriticSpec, rollout, constitution: Constitution) -> Critic:
    if spec.kind != "rules":
        return ModelCritic(build_chat_model(spec, rollout))
    if not any(p.check in REPAIRS for p in constitution.principles):
        raise ValueError(
            f"constitutional.critic kind 'rules': no principle of constitution "
            f"{constitution.name!r} has a check with a repair (those with one: "
            f"{', '.join(sorted(REPAIRS))}); use a model critic"
        )
    return RulesCritic()


def user_text(prompt: list[dict]) -> str:
    """The last message of a prompt: what the principles' checks read as the question."""
    return prompt[-1]["content"]


def passes_gate(
    constitution: Constitution, principle: Principle, prompt: str, before: str, after: str
) -> bool:
    """A revision passes if it follows the principle it was asked to fix (where a check
    can tell) and breaks no checked principle that the answer before it followed."""
    if principle.check and not get_check(principle.check)(prompt, after):
        return False
    return all(
        get_check(p.check)(prompt, after) or not get_check(p.check)(prompt, before)
        for p in constitution.checked
    )


def critique_and_revise(
    critic: Critic,
    constitution: Constitution,
    prompts: list[list[dict]],
    chains: list[Chain],
    rounds: int,
    rngs: list[random.Random],
    gate: bool = True,
) -> None:
    """Run `rounds` critique-revision rounds over every chain, batched per round; chain
    i draws its principles from `rngs[i]`. Each step records its verdict: `unchanged`
    (an empty revision or the same answer), `rejected` (with `gate`, the constitution's
    checks refuse it: `passes_gate`) or `accepted` (the revision is the answer now)."""
    for _ in range(rounds):
        principles = [rng.choice(constitution.principles) for rng in rngs]
        chain_prompts = [prompts[c.prompt_index] for c in chains]
        critiques, revisions = critic.critique_and_revise(
            chain_prompts, [c.answer for c in chains], principles
        )
        for chain, prompt, p, crit, rev in zip(
            chains, chain_prompts, principles, critiques, revisions, strict=True
        ):
            revision = rev.strip()
            if not revision or revision == chain.answer:
                verdict = "unchanged"
            elif gate and not passes_gate(
                constitution, p, user_text(prompt), chain.answer, revision
            ):
                verdict = "rejected"
            else:
                verdict = "accepted"
                chain.answer = revision
            chain.steps.append(
                {"principle": p.name, "critique": crit, "revision": rev, "verdict": verdict}
            )


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
    rejected = sum(step.get("verdict") == "rejected" for c in chains for step in c.steps)
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
        "rejected": float(rejected),
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
        critic = build_critic(options.critic, config.rollout, constitution)
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
                    gate=options.gate,
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
        "gate": options.gate,
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
            f"{config.run.name}: no revision of {len(chains)} answers was kept "
            f"({int(metrics['rejected'])} rejected by the constitution's checks); check the "
            "critic model (or set constitutional.keep_unchanged=true)"
        )
    splits = {"sft": write_split(config, "sft", sft)}
    if preference:
        splits["preference"] = write_split(config, "preference", preference)
    logger.info(
        f"[{config.run.name}] wrote {len(sft)} SFT rows and {len(preference)} preference rows "
        f"({int(metrics['unchanged'])} answers unchanged, {int(metrics['rejected'])} revisions "
        "rejected by the constitution's checks)"
    )
    return splits, metrics


def run_constitutional(config: ConstitutionalStageConfig):
    """The whole stage; returns the final checkpoint's registry entry (or the SFT dataset's)."""
    config = absolute_paths(config)  # the closures below see the resolved paths

    def generate(constitution: Constitution, prompts: list[list[dict]]):
        return generate_revisions(config, constitution, prompts)

    return run_safety_stage(config, "constitutional", generate, "sft")


STAGE = StageDefinition("constitutional", ConstitutionalStageConfig, run_constitutional)
