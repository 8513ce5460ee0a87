"""What the two safety stages share: prompts in, generated splits out, follow-up training.

A safety stage samples the policy's answers, turns them into training data (revisions
or AI-labelled pairs), writes the splits with per-row provenance, registers them as
datasets, trains the configured follow-up stages on them (SFT, DPO, reward model)
and records each checkpoint's held-out violation rate per checkable principle.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from pipelines.constitution import Constitution, load_constitution
from pipelines.evaluate import read_prompt_rows
from pipelines.principle_checks import get_check, violation_rate
from pipelines.safety_config import (
    ChatModelSpec,
    ConstitutionalStageConfig,
    RLAIFStageConfig,
    SafetyStageConfig,
)
from pipelines.safety_journal import (
    check_settings,
    data_dir,
    data_files,
    keep,
    kept_progress,
    release,
)
from rayalign import storage
from rayalign.cluster import init_ray
from rayalign.config import EVAL_SPLIT, TRAIN_SPLIT, Source, load_config, resolve_local
from rayalign.data.datasets import validate_rows
from rayalign.data.io import write_jsonl
from rayalign.data.sources import as_json, resolve_source
from rayalign.registry import DatasetEntry, Registry, RegistryEntry
from rayalign.storage import write_atomic

logger = logging.getLogger(__name__)

SPLIT_FORMATS = {"sft": "language_modeling", "preference": "preference"}
FOLLOW_UP_SPLIT = {"sft": "sft", "dpo": "preference", "reward_model": "preference"}


S = TypeVar("S", bound=SafetyStageConfig)


def absolute_paths(config: S) -> S:
    """`config` with its local model, critic, labeller and data paths made absolute: the
    rollout pool, critics and measurements run in Ray actors started elsewhere."""

    def chat(spec: ChatModelSpec | None) -> ChatModelSpec | None:
        return spec and spec.model_copy(update={"path": resolve_local(spec.path)})

    update: dict[str, Any] = {
        "model": config.model.model_copy(
            update={"name_or_path": resolve_local(config.model.name_or_path)}
        ),
        "data": config.data.model_copy(
            update={
                "prompts": resolve_source(config.data.prompts),
                "prompts_eval": resolve_source(config.data.prompts_eval),
            }
        ),
        "constitution": resolve_local(config.constitution),
    }
    if isinstance(config, ConstitutionalStageConfig):
        options = config.constitutional
        update["constitutional"] = options.model_copy(update={"critic": chat(options.critic)})
    if isinstance(config, RLAIFStageConfig):
        labeller = config.rlaif.labeller.model_copy(
            update={"model": chat(config.rlaif.labeller.model)}
        )
        update["rlaif"] = config.rlaif.model_copy(update={"labeller": labeller})
    return config.model_copy(update=update)


def read_prompt_conversations(
    source: Source, split: str = TRAIN_SPLIT, limit: int | None = None
) -> list[list[dict]]:
    """The `prompt` of each row as chat messages (a string becomes one user message)."""
    return read_prompt_rows(source, split=split, limit=limit).conversations


def write_split(config: SafetyStageConfig, split: str, rows: list[dict]) -> str:
    """Validate `rows` in the split's TRL format, then write `<run>/data/<split>_train.jsonl`
    atomically (a crash never leaves half a file). Returns its path in the run's storage,
    where the follow-up stages' workers read it."""
    name = f"{split}_train.jsonl"
    path = data_dir(config) / name
    validate_rows(rows, SPLIT_FORMATS[split], str(path))
    write_jsonl(path, rows)
    keep(config)
    return storage.join(data_files(config).path, name)


def common_settings(config: SafetyStageConfig, prompts: list[list[dict]]) -> dict[str, Any]:
    """What the policy's answers depend on (`check_settings`)."""
    return {
        "model": config.model.name_or_path,
        "prompts": as_json(config.data.prompts),
        "prompt_count": len(prompts),
        "seed": config.run.seed,
        "sampling": config.sampling.model_dump(),
    }


def policy_answers(
    config: SafetyStageConfig, prompts: list[list[dict]], settings: dict[str, Any]
) -> list[list[str]]:
    """`sample_policy`, kept in `<run>/data/answers.jsonl`: a rerun reuses the answers.

    `settings` are what the stage's rows depend on besides the answers (critic, labeller,
    rounds...): an earlier attempt's rows continue only under the same (`check_settings`).
    """
    check_settings(config, {**common_settings(config, prompts), **settings})
    path = data_dir(config) / "answers.jsonl"
    if path.exists():
        answers = [json.loads(x)["answers"] for x in path.read_text().splitlines()]
        if len(answers) == len(prompts):
            logger.info(f"[{config.run.name}] reusing the policy's answers in {path}")
            return answers
    logger.info(f"[{config.run.name}] sampling {len(prompts)} prompts")
    answers = sample_policy(config, prompts)
    write_atomic(path, "".join(json.dumps({"answers": a}) + "\n" for a in answers))
    keep(config)
    return answers


def finished_splits(config: SafetyStageConfig) -> tuple[dict[str, str], dict] | None:
    """(splits, metrics) a previous attempt of this run wrote in full (its manifest exists)."""
    manifest = data_dir(config) / "manifest.json"
    if not manifest.exists():
        return None
    raw = json.loads(manifest.read_text())
    splits = dict(raw.pop("splits"))
    raw.pop("stage", None)
    return splits, raw


def record_splits(
    config: SafetyStageConfig, stage: str, splits: dict[str, str], metrics: dict[str, float]
) -> dict[str, DatasetEntry]:
    """Write the manifest (the data is complete) and register each split as a dataset
    named `<run>-<split>` in the registry's datasets section."""
    manifest = {"stage": stage, "splits": splits, **metrics}
    write_atomic(data_dir(config) / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    keep(config)
    registry = Registry(storage.parent(config.run_dir))
    entries = {}
    for split, path in splits.items():
        entries[split] = DatasetEntry(
            name=f"{config.run.name}-{split}",
            stage=stage,
            format=SPLIT_FORMATS[split],
            path=path,
            parent=config.model.name_or_path,
            rows=sum(1 for _ in (data_dir(config) / storage.basename(path)).open()),
            metrics=metrics,
        )
        registry.register_dataset(entries[split])
    return entries


def provenance(config: SafetyStageConfig, constitution: Constitution, **extra: Any) -> dict:
    return {
        "constitution": constitution.name,
        "checkpoint": config.model.name_or_path,
        "run": config.run.name,
        **extra,
    }


def measure_violations(
    checkpoint: str, constitution: Constitution, prompts: Source, max_new_tokens: int
) -> dict[str, float]:
    """Held-out violation rate of each checkable principle under greedy decoding."""
    from pipelines.evaluate import generate_hf

    prompts = read_prompt_conversations(prompts, EVAL_SPLIT)
    answers = generate_hf(checkpoint, prompts, max_new_tokens)
    texts = [p[-1]["content"] for p in prompts]
    return {
        f"heldout_violation_{p.name}": violation_rate(get_check(p.check), texts, answers)
        for p in constitution.checked
    }


def remote_violations(config: SafetyStageConfig, constitution: Constitution, checkpoint: str):
    """`measure_violations` as a Ray task (the driver does no heavy compute), or {}."""
    import ray

    if not config.data.prompts_eval or not constitution.checked:
        return {}
    task = ray.remote(num_cpus=1)(measure_violations)
    return ray.get(
        task.remote(checkpoint, constitution, config.data.prompts_eval, config.eval_max_new_tokens)
    )


def policy_violations(config: SafetyStageConfig, constitution: Constitution) -> dict:
    """The policy's held-out violation rates, kept in `<run>/data/policy_violations.json`
    (a rerun does not measure them again)."""
    path = data_dir(config) / "policy_violations.json"
    measured_on = [as_json(config.data.prompts_eval), config.eval_max_new_tokens]
    if path.exists():
        kept = json.loads(path.read_text())
        if kept["measured_on"] == measured_on:
            return kept["rates"]
    rates = remote_violations(config, constitution, config.model.name_or_path)
    write_atomic(path, json.dumps({"measured_on": measured_on, "rates": rates}) + "\n")
    keep(config)
    return rates


def sample_policy(config: SafetyStageConfig, prompts: list[list[dict]]) -> list[list[str]]:
    """`sampling.samples_per_prompt` answers of the policy to each prompt, via the rollout pool."""
    from pipelines.policy_sampling import build_pool, sample_texts

    s = config.sampling
    pool = build_pool(
        config.model.name_or_path, config.rollout, seed=config.run.seed, dtype=config.model.dtype
    )
    try:
        return sample_texts(
            pool,
            prompts,
            n=s.samples_per_prompt,
            temperature=s.temperature,
            top_p=s.top_p,
            max_tokens=s.max_new_tokens,
        )
    finally:
        pool.shutdown()


def run_follow_ups(config: SafetyStageConfig, splits: dict[str, str]) -> RegistryEntry | None:
    """Train each `config.then` stage on its split; returns the last one's registry entry.

    Each follow-up runs as `<run>-<stage>` (rerunning resumes it) and starts from the
    previous one's checkpoint (the first from the policy); the last registers as
    `config.register_as` (default: the run name).
    """
    from pipelines.stage_registry import load_stage

    entry = None
    for i, follow in enumerate(config.then):
        split = FOLLOW_UP_SPLIT[follow.stage]
        if split not in splits:
            raise ValueError(
                f"then[{i}]: stage {follow.stage!r} trains on the {split!r} split, which this "
                f"stage does not write (it writes: {', '.join(sorted(splits))})"
            )
        last = i == len(config.then) - 1
        name = f"{config.run.name}-{follow.stage}"
        stage = load_stage(follow.stage)
        stage_config = load_config(
            stage.config_cls,
            follow.config,
            [
                f"model.name_or_path={entry.path if entry else config.model.name_or_path}",
                *follow.overrides,
                f"data.train={splits[split]}",
                f"run.name={name}",
                f"run.storage_path={config.run.storage_path}",
                f"register_as={(config.register_as or config.run.name) if last else name}",
            ],
        )
        logger.info(f"[{config.run.name}] training {follow.stage} on {splits[split]}")
        entry = stage.run(stage_config)
    return entry


def add_metrics(config: SafetyStageConfig, entry: RegistryEntry, metrics: dict) -> None:
    """Record more metrics on a registered checkpoint (e.g. its violation rates)."""
    entry.metrics.update(metrics)
    entry.created = time.time()
    Registry(storage.parent(config.run_dir)).register(entry)


def finish(
    config: SafetyStageConfig,
    constitution: Constitution,
    splits: dict[str, str],
    datasets: dict[str, DatasetEntry],
    primary: str,
) -> RegistryEntry | DatasetEntry:
    """Train the follow-ups, measure the final checkpoint's violation rates and report.

    Returns the final checkpoint's entry, or the `primary` split's dataset entry when the
    stage trains nothing.
    """
    entry = run_follow_ups(config, splits)
    if entry is None:
        return datasets[primary]
    violations = remote_violations(config, constitution, entry.path)
    if violations:
        add_metrics(config, entry, violations)
        logger.info(
            f"[{config.run.name}] {entry.name}: "
            + ", ".join(f"{k}={v:.3f}" for k, v in sorted(violations.items()))
        )
    return entry


Generate = Callable[[Constitution, list[list[dict]]], tuple[dict[str, str], dict[str, float]]]


def run_safety_stage(
    config: SafetyStageConfig,
    stage: str,
    generate: Generate,
    primary: str,
    validate: Callable[[Constitution], object] | None = None,
) -> RegistryEntry | DatasetEntry:
    """Load and check the inputs, generate the splits (or reuse a finished attempt's),
    register them, train the follow-ups and return the final entry.

    Args:
        generate: `(constitution, prompts) -> (splits, metrics)`, the stage's own work.
        primary: the split whose dataset entry is returned when nothing is trained.
        validate: more checks of the inputs, run before any work starts.
    """
    # Bad input (constitution, prompts, ...) fails here, before anything is written.
    constitution = load_constitution(config.constitution)
    prompts = read_prompt_conversations(config.data.prompts, limit=config.data.max_prompts)
    if validate:
        validate(constitution)
    init_ray(config.rollout.num_workers * config.rollout.cpus_per_worker + 2)
    data_files(config, fresh=True)  # what earlier attempts kept, wherever they ran
    try:
        done = finished_splits(config)
        if done:
            splits, metrics = done
            logger.info(f"[{config.run.name}] reusing the data of an earlier attempt")
        else:
            policy = policy_violations(config, constitution)
            try:
                splits, metrics = generate(constitution, prompts)
            except BaseException:  # also Ctrl-C and SIGTERM: say what a rerun continues from
                logger.info(f"[{config.run.name}] stopped: {kept_progress(config)}")
                raise
            metrics.update({f"policy_{k}": v for k, v in policy.items()})
        datasets = record_splits(config, stage, splits, metrics)
        return finish(config, constitution, splits, datasets, primary)
    finally:
        release(config)
