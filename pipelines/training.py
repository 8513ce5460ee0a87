"""Run an offline stage (SFT, reward model, DPO, KTO) as a Ray Train job.

A stage is a `Stage`: its config class, how to validate its data on the driver, how
to build its TRL trainer on a worker, and how to measure its final checkpoint. This
module does the rest for every stage: Ray Train `TorchTrainer` with data-parallel
workers, checkpoints reported to Ray Train as self-contained HF directories, resume
from the latest one (worker failure or rerun with the same name), held-out metrics,
and registration in the run registry.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

from ray.train.torch import TorchConfig, TorchTrainer
from transformers import Trainer
from transformers.integrations import TensorBoardCallback
from transformers.trainer_callback import PrinterCallback

from pipelines.stage_registry import REGISTRY as STAGE_REGISTRY
from pipelines.stage_registry import StageDefinition
from pipelines.train_callbacks import (
    ReportCallback,
    ResumableTensorBoard,
    record_attempt,
    resume_dir,
    resume_step,
)
from pipelines.trainer_inputs import check_trainer_args, parameter_counts, stage_args
from pipelines.training_config import StageConfig
from rayalign import storage
from rayalign.cluster import init_ray
from rayalign.config import resolve_local
from rayalign.data.sources import resolve_source
from rayalign.logs import configure as configure_logging
from rayalign.models.loading import load_causal_lm
from rayalign.models.lora import ADAPTER_DIR
from rayalign.registry import Registry, RegistryEntry

logger = logging.getLogger(__name__)

FINAL_DIR = "final"
MEASURED = "measured"  # the final report's flag: its metrics include the held-out measures
# How often Ray Train's controller polls its workers (Ray's default: 2 s). Each phase
# change (workers up, training done) waits for the next poll: on a short stage the
# default cost 4.7 s of 25 (a 2-step SFT on the tiny model, 2 cores). A value the user
# sets in the driver's environment wins; Ray Train passes it on to the controller.
HEALTH_CHECK_INTERVAL_S = "0.5"


@dataclass(frozen=True)
class Stage:
    """What an offline stage module provides to `run_stage` (its Ray Train recipe)."""

    name: str
    kind: Literal["chat", "reward"]
    config_cls: type[StageConfig]
    validate_data: Callable[[Any], None]
    build_trainer: Callable[[Any, dict[str, Any]], Trainer]
    measure: Callable[[Any, str], dict[str, float]]
    trl_config: str = "TrainingArguments"  # the TRL config class `trainer:` is checked against
    trl_args: Callable[[Any], dict[str, Any]] = lambda config: {}  # the stage's own arguments
    # The stage's own arguments, each with the setting that sets it (a `trainer:` key may
    # not set them).
    owned: dict[str, str] = field(default_factory=dict)

    def definition(self) -> StageDefinition:
        """The stage as the stage registry runs it: `run_stage` with this recipe."""
        return StageDefinition(self.name, self.config_cls, partial(run_stage, self))


def _worker_loop(cfg: dict[str, Any]) -> None:
    """Runs on each Ray Train worker: build the TRL trainer, train (or resume), export."""
    import ray.train

    configure_logging()  # this worker's progress lines reach the job's log
    stage = _resolve_stage(cfg["stage"])
    config = stage.config_cls.model_validate(cfg["config"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    output_dir = tempfile.mkdtemp(prefix=f"rayalign-{stage.name}-rank{rank}-")
    # TensorBoard writes local files: into the run's folder, or one uploaded at the end.
    tensorboard = storage.join(config.run_dir, "tensorboard")
    local_tensorboard = tempfile.mkdtemp() if storage.is_uri(tensorboard) else tensorboard
    os.environ["TENSORBOARD_LOGGING_DIR"] = local_tensorboard
    trainer = stage.build_trainer(config, stage_args(stage, config, output_dir))
    counts = parameter_counts(trainer.model)
    if rank == 0:
        logger.info(
            f"[{stage.name}] trainable parameters: {counts['trainable_params']:,.0f} of "
            f"{counts['total_params']:,.0f}" + (f" (LoRA r={config.lora.r})" if config.lora else "")
        )
    trainer.remove_callback(PrinterCallback)  # ProgressCallback prints a readable line instead
    resume = resume_dir(ray.train.get_checkpoint())
    if trainer.callback_handler.pop_callback(TensorBoardCallback) is not None:
        # A fresh start (step 0) also drops what an attempt without a checkpoint logged.
        # Added before ReportCallback: its upload at a checkpoint precedes the report.
        step = resume_step(resume)
        remote = local_tensorboard != tensorboard
        trainer.add_callback(
            ResumableTensorBoard(
                purge_step=step + 1 if step else 0,
                local_dir=local_tensorboard if remote else None,
                upload_to=tensorboard if remote else None,
            )
        )
    trainer.add_callback(ReportCallback())
    if rank == 0:
        from pipelines.progress import ProgressCallback

        trainer.add_callback(ProgressCallback(stage.name))
    if rank == 0:
        record_attempt(config.run_dir, resume, ctx.get_world_size())
    trainer.train(resume_from_checkpoint=resume)
    if rank == 0 and local_tensorboard != tensorboard:
        storage.upload(local_tensorboard, tensorboard)

    # The final checkpoint: weights, config, tokenizer and trainer state, no optimizer.
    final = Path(output_dir) / FINAL_DIR
    checkpoint, measured = None, {}
    if rank == 0:
        if config.lora:
            _save_merged_lora(config, trainer, final)
        else:
            if not (resume and Path(resume).name == FINAL_DIR):  # merged already
                _merge_with_start(config, trainer.model)
            trainer.save_model(str(final))
        trainer.state.save_to_json(str(final / "trainer_state.json"))
        checkpoint = ray.train.Checkpoint.from_directory(str(final))
        # Measured here, where the libraries are imported and the resources are the
        # stage's: a separate Ray task cost 12 s of process start and imports per stage.
        logger.info(f"[{stage.name}] trained {trainer.state.global_step} steps; measuring")
        measured = {**stage.measure(config, str(final)), MEASURED: 1.0}
    ray.train.report(
        {"step": trainer.state.global_step, "final": 1.0, **counts, **measured},
        checkpoint=checkpoint,
        checkpoint_dir_name=FINAL_DIR,
    )
    shutil.rmtree(output_dir, ignore_errors=True)


def _save_merged_lora(config: StageConfig, trainer: Trainer, final: Path) -> None:
    """The LoRA run's final checkpoint: the adapters merged into the base weights (a plain
    checkpoint that vLLM and every stage load), with the adapters themselves in
    `adapter/` for serving several adapters on one base."""
    import torch

    model = trainer.model
    model.save_pretrained(str(final / ADAPTER_DIR))
    merged = model.merge_and_unload()
    _merge_with_start(config, merged)
    merged.save_pretrained(str(final), safe_serialization=True)
    trainer.processing_class.save_pretrained(str(final))
    torch.save(trainer.args, final / "training_args.bin")


def _merge_with_start(config: StageConfig, model) -> None:
    """Interpolate the trained `model` toward the checkpoint it started from, in place,
    when `training.merge_with_start` asks for it."""
    weight = config.training.merge_with_start
    if weight == 1:
        return
    from rayalign.models.merging import interpolate_with_start_

    m = config.model
    start = load_causal_lm(
        m.name_or_path, dtype=m.dtype, revision=m.revision, trust_remote_code=m.trust_remote_code
    )
    interpolate_with_start_(model, start, weight)
    logger.info(
        f"[rayalign] final weights: {weight} x trained + {1 - weight:.3g} x {m.name_or_path}"
    )


def absolute_local_paths(config: StageConfig) -> StageConfig:
    """`config` with its relative local model and data paths made absolute, as seen from
    the driver: Ray Train workers start in another directory. Hub ids stay as they are."""

    fix = resolve_local
    data_fields = ("train", "eval", "prompts_eval", "preference_eval")
    update: dict[str, Any] = {
        "model": config.model.model_copy(update={"name_or_path": fix(config.model.name_or_path)}),
        "data": config.data.model_copy(
            update={k: resolve_source(getattr(config.data, k)) for k in data_fields}
        ),
    }
    dpo = getattr(config, "dpo", None)
    if dpo is not None and dpo.ref_model:
        update["dpo"] = dpo.model_copy(update={"ref_model": fix(dpo.ref_model)})
    return config.model_copy(update=update)


def run_stage(stage: Stage, config: StageConfig) -> RegistryEntry:
    """Validate data, train on Ray Train, measure and register the final checkpoint.

    Returns:
        The registry entry of the final checkpoint.
    """
    import ray

    config = absolute_local_paths(config)
    stage.validate_data(config)  # bad data stops here, before any worker or checkpoint
    check_trainer_args(stage, config)
    run_dir = config.run_dir  # a local folder or a URI in object storage
    storage.write_text(
        storage.join(run_dir, "config.json"),
        json.dumps({"stage": stage.name, **config.model_dump(mode="json")}, indent=2),
    )
    init_ray(config.resources.num_workers * config.resources.cpus_per_worker + 1)

    final_path = finished_final(run_dir, config.training.max_steps)
    if final_path:  # a rerun of a finished run: training again would add a step
        logger.info(f"[{stage.name}] {final_path} is finished already; measuring it again")
        previous = storage.join(run_dir, "result.json")
        trained = _read_json(previous).get("metrics", {}) if storage.exists(previous) else {}
    else:
        final_path, trained = _fit(stage, config, run_dir)
    step = int(_read_json(storage.join(final_path, "trainer_state.json"))["global_step"])
    metrics = dict(trained)
    if not metrics.pop(MEASURED, None):  # the rank-0 worker measures what it trains
        logger.info(f"[{stage.name}] measuring {final_path}")
        metrics.update(ray.get(ray.remote(num_cpus=1)(_measure).remote(stage, config, final_path)))
    entry = RegistryEntry(
        name=config.register_as or config.run.name,
        stage=stage.name,
        kind=stage.kind,
        path=str(final_path),
        parent=config.model.name_or_path,
        step=step,
        metrics=metrics,
    )
    Registry(storage.parent(run_dir)).register(entry)
    storage.write_text(storage.join(run_dir, "result.json"), json.dumps(entry.__dict__, indent=2))
    logger.info(
        f"[{stage.name}] registered {entry.name!r}: "
        + ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
    )
    return entry


def _measure(stage: Stage, config: StageConfig, checkpoint: str) -> dict[str, float]:
    """The stage's held-out metrics of `checkpoint` (a Ray task: a copy on its node)."""
    return stage.measure(config, storage.local_copy(checkpoint))


def _fit(stage: Stage, config: StageConfig, run_dir) -> tuple[str, dict[str, float]]:
    """Train on Ray Train (resuming from the latest committed checkpoint). Returns the
    final checkpoint's path and the last logged training metrics."""
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", HEALTH_CHECK_INTERVAL_S)
    resources = {"CPU": config.resources.cpus_per_worker, **config.resources.custom_resources}
    if config.resources.use_gpu:
        resources["GPU"] = 1
    trainer = _StoppableTrainer(
        _worker_loop,
        # The Stage's functions travel by reference: the worker imports the stage module.
        train_loop_config={
            "stage": _portable_stage(stage),
            "config": config.model_dump(mode="json"),
        },
        torch_config=TorchConfig(backend="nccl" if config.resources.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=config.resources.num_workers,
            use_gpu=config.resources.use_gpu,
            resources_per_worker=resources,
        ),
        run_config=RayRunConfig(
            name=config.run.name,
            storage_path=storage.parent(run_dir),
            failure_config=FailureConfig(max_failures=config.training.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=config.training.keep_checkpoints + 1),
            # Ray Train's print patch logs every print a second time, and also the prints
            # that `dill` captures into a StringIO (datasets' fingerprinting disassembles
            # the tokenising functions): pages of bytecode on the terminal.
            worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
        ),
    )
    try:
        result = trainer.fit()
    except KeyboardInterrupt:
        trainer.stop()  # before naming the kept checkpoint: no commit comes after it
        logger.info(f"[{stage.name}] interrupted: {kept_checkpoint(run_dir)}")
        raise
    metrics = {
        k: float(v)
        for k, v in (result.metrics or {}).items()
        if k != "final" and isinstance(v, int | float)
    }
    return _final_checkpoint_path(result, run_dir), metrics


def _portable_stage(stage: Stage) -> Stage | str:
    """The stage as Ray Train's controller carries it: the registry's name for a registered
    stage, else the object.

    The controller unpickles `train_loop_config` (it is part of the run's context), and a
    `Stage` object made it import this module and the stage's, with transformers and TRL:
    10 s of a 2-core machine's time on every run, on the way to starting the workers.
    """
    registered = STAGE_REGISTRY.get(stage.name)
    if registered and getattr(importlib.import_module(registered.module), "TRAINER", None) is stage:
        return stage.name
    return stage


def _resolve_stage(stage: Stage | str) -> Stage:
    """The `Stage` that `_portable_stage` gave (in the worker, which imports it anyway)."""
    if isinstance(stage, str):
        return importlib.import_module(STAGE_REGISTRY[stage].module).TRAINER
    return stage


class _StoppableTrainer(TorchTrainer):
    """A `TorchTrainer` whose run `stop()` ends: SIGINT and SIGTERM reach the driver as
    KeyboardInterrupt (rayalign.interrupts), and the driver then stops the controller and
    its workers before it says which checkpoint it kept. Without this, the workers went on
    training until the driver's process was gone and committed checkpoints after the one
    the driver had named (seen in CI: "kept checkpoint-000080", then 100 and 120).

    Written against Ray 2.60's Train V2, where `fit()` hands the controller it starts to
    `_register_sigint_handler` (on the main thread only). Ray's handler, which aborts the
    run on SIGINT and then exits 0, is not installed: both signals take rayalign's path.
    """

    _controller = None

    def _register_sigint_handler(self, controller) -> None:
        self._controller = controller

    def stop(self) -> None:
        import ray

        if self._controller is None:
            return
        # abort stops the workers, then the controller exits (the call may not return)
        with contextlib.suppress(ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            ray.get(self._controller.abort.remote(), timeout=120)


def finished_final(run_dir: Path | str, max_steps: int | None) -> str | None:
    """The run's final checkpoint if Ray Train committed it with all `max_steps` steps
    (all the steps that its epochs came to, when `max_steps` is None)."""
    latest = _latest_committed(run_dir)
    if latest is None or latest[0] != FINAL_DIR:
        return None
    final = storage.join(run_dir, FINAL_DIR)
    try:
        state = _read_json(storage.join(final, "trainer_state.json"))
        step, planned = int(state["global_step"]), int(state["max_steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return final if step >= (planned if max_steps is None else max_steps) else None


def _latest_committed(run_dir: Path | str) -> tuple[str, Any] | None:
    """(directory name, step) of Ray Train's last committed checkpoint, if any."""
    try:
        latest = _read_json(storage.join(run_dir, "checkpoint_manager_snapshot.json"))
        latest = latest["latest_checkpoint_result"]
        return latest["checkpoint_dir_name"], latest["metrics"].get("step")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _read_json(path: Path | str) -> dict:
    return json.loads(storage.read_text(path))


def kept_checkpoint(run_dir: Path | str) -> str:
    """What a rerun of the stage resumes from: Ray Train's last committed checkpoint."""
    latest = _latest_committed(run_dir)
    if latest is None:
        return "no checkpoint committed yet; a rerun starts at step 0"
    name, step = latest
    return f"kept {storage.join(run_dir, name)} (step {step}); rerun the same command to resume from it"


def _final_checkpoint_path(result, run_dir: Path | str) -> str:
    """Where Ray Train put the final checkpoint, as the run's storage names it (Ray's own
    `Checkpoint.path` drops a URI's scheme)."""
    if result.error is not None:
        raise result.error
    ckpt = result.checkpoint
    if ckpt is None or Path(ckpt.path).name != FINAL_DIR:
        raise RuntimeError(f"training finished without a final checkpoint (latest: {ckpt})")
    return storage.join(run_dir, FINAL_DIR)
