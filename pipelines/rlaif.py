"""RLAIF: preference pairs labelled by an AI against a constitution, then DPO or a reward model.

    sample k answers per prompt (vLLM rollout pool) -> pair them -> label each pair in
    both orders (programmatic or model labeller) -> keep consistent verdicts -> write the
    preference split with provenance -> train the `then` stages on it

The answers and every `save_every` labelled pairs are kept in `<run>/data/` as they are
made: a rerun continues where the last attempt stopped.

Run as `rayalign train rlaif --config FILE [key=value ...]`.
"""

from __future__ import annotations

import itertools
import logging
import random

from pipelines.constitution import Constitution
from pipelines.labelling import (
    Labeller,
    ModelLabeller,
    ProgrammaticLabeller,
    Verdicts,
    checks_scorer,
    import_scorer,
    judge_both_orders,
    tally,
)
from pipelines.safety_config import RLAIFStageConfig
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


def build_labeller(config: RLAIFStageConfig, constitution: Constitution) -> Labeller:
    spec = config.rlaif.labeller
    if spec.kind == "programmatic":
        if spec.function:
            return ProgrammaticLabeller(import_scorer(spec.function), spec.function)
        checks = ",".join(p.check for p in constitution.checked)
        return ProgrammaticLabeller(checks_scorer(constitution), f"checks:{checks}")
    from pipelines.chat_models import build_chat_model

    return ModelLabeller(build_chat_model(spec.model, config.rollout), constitution)


def candidate_pairs(
    answers: list[list[str]], max_pairs_per_prompt: int, rng: random.Random
) -> list[tuple[int, str, str]]:
    """Up to `max_pairs_per_prompt` pairs of distinct answers per prompt, drawn at random."""
    pairs = []
    for i, texts in enumerate(answers):
        distinct = list(dict.fromkeys(t.strip() for t in texts if t.strip()))
        combos = list(itertools.combinations(distinct, 2))
        rng.shuffle(combos)
        pairs.extend((i, a, b) for a, b in combos[:max_pairs_per_prompt])
    return pairs


def label_all(
    config: RLAIFStageConfig,
    labeller: Labeller,
    prompts: list[list[dict]],
    pairs: list[tuple[int, str, str]],
) -> list[Verdicts]:
    """Both verdicts on every pair, `config.save_every` pairs at a time, each batch
    appended to `<run>/data/labels.jsonl` when judged; pairs found there (an earlier
    attempt's) are not judged again."""
    journal = Journal(config, "labels.jsonl", len(pairs), "pairs labelled")
    for i, row in journal.rows.items():
        if i >= len(pairs) or tuple(row["pair"]) != pairs[i]:
            raise ValueError(f"{journal.path}: pair {i} is not the pair judged now")
    for batch in journal.todo():
        verdicts = judge_both_orders(labeller, prompts, [pairs[i] for i in batch])
        journal.add(
            [
                {"id": i, "pair": pairs[i], "forward": v1, "backward": v2}
                for i, (v1, v2) in zip(batch, verdicts, strict=True)
            ]
        )
    return [(row["forward"], row["backward"]) for row in journal.ordered()]


def generate_pairs(
    config: RLAIFStageConfig,
    constitution: Constitution,
    labeller: Labeller,
    prompts: list[list[dict]],
):
    """Sample, pair and label; write the preference split. Returns (splits, metrics).

    The policy's answers and each batch of verdicts are on disk as soon as they exist,
    so a rerun continues where the last attempt stopped.
    """
    settings = {
        "constitution": constitution.name,
        "labeller": labeller.label,
        "max_pairs_per_prompt": config.rlaif.max_pairs_per_prompt,
    }
    answers = policy_answers(config, prompts, settings)
    rng = random.Random(config.run.seed)
    pairs = candidate_pairs(answers, config.rlaif.max_pairs_per_prompt, rng)
    logger.info(f"[{config.run.name}] labelling {len(pairs)} pairs in both orders")
    kept, stats = tally(pairs, label_all(config, labeller, prompts, pairs))
    if not kept:
        raise ValueError(
            f"{config.run.name}: none of {stats.pairs} pairs got a consistent label "
            f"({stats.ties} ties, {stats.inconsistent} contradicting orders); sample more "
            "answers per prompt, at a higher temperature, or check the labeller"
        )
    origin = provenance(config, constitution, labeller=labeller.label)
    rows = [
        {
            "prompt": prompts[p.prompt_index],
            "chosen": [{"role": "assistant", "content": p.chosen}],
            "rejected": [{"role": "assistant", "content": p.rejected}],
            "provenance": origin,
        }
        for p in kept
    ]
    splits = {"preference": write_split(config, "preference", rows)}
    metrics = stats.as_metrics()
    logger.info(
        f"[{config.run.name}] kept {stats.kept}/{stats.pairs} pairs "
        f"(ties {stats.ties}, contradicting {stats.inconsistent}, "
        f"agreement {stats.agreement_rate:.2f})"
    )
    return splits, metrics


def run_rlaif(config: RLAIFStageConfig):
    """The whole stage; returns the final checkpoint's registry entry (or the dataset's)."""
    config = absolute_paths(config)  # the closures below see the resolved paths

    def generate(constitution: Constitution, prompts: list[list[dict]]):
        labeller = build_labeller(config, constitution)
        try:
            return generate_pairs(config, constitution, labeller, prompts)
        finally:
            if isinstance(labeller, ModelLabeller):
                labeller.chat.close()

    def validate(constitution: Constitution) -> None:
        if config.rlaif.labeller.kind == "programmatic":  # the checks or function exist
            build_labeller(config, constitution)

    return run_safety_stage(config, "rlaif", generate, "preference", validate)


STAGE = StageDefinition("rlaif", RLAIFStageConfig, run_rlaif)
