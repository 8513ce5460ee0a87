"""The `rayalign` command line: a thin dispatcher onto the stage drivers."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from pipelines.stage_registry import STAGE_NAMES, load_stage
from rayalign import interrupts, storage
from rayalign.config import ConfigError
from rayalign.data.io import DataError
from rayalign.logs import configure as configure_logging


def _cmd_init_model(args: argparse.Namespace) -> None:
    from rayalign.models.factory import init_model

    # Object storage (s3://...): written to a local folder, then uploaded.
    with storage.local_folder_for(args.out) as local:
        init_model(args.preset, local, seed=args.seed)
    print(f"wrote {args.preset} model to {args.out}")


def _cmd_data_make(args: argparse.Namespace) -> None:
    from rayalign.config import parse_override
    from rayalign.data.tasks import build_task
    from rayalign.data.tasks.splits import write_task_data

    options = {}
    for text in args.option:
        parts, value = parse_override(text)
        options[".".join(parts)] = value
    task = build_task(args.task, options)
    # Object storage (s3://...): written locally, then uploaded as a folder.
    local = tempfile.mkdtemp(prefix="rayalign-data-") if storage.is_uri(args.out) else args.out
    manifest = write_task_data(
        task,
        local,
        seed=args.seed,
        n_train=args.n_train,
        n_test=args.n_test,
        rejected_per_prompt=args.rejected_per_prompt,
    )
    if local != args.out:
        storage.upload(local, args.out)
        shutil.rmtree(local, ignore_errors=True)
    print(
        f"wrote task {args.task!r} to {args.out}: " + ", ".join(sorted(manifest["files"].values()))
    )


def _cmd_eval(args: argparse.Namespace) -> None:
    from pipelines.evaluate import evaluate, write_result

    result = evaluate(args.model, args.data, engine=args.engine, max_new_tokens=args.max_new_tokens)
    out = args.out or (
        Path(args.model) / f"eval_{Path(args.data).stem}.json"
        if Path(args.model).is_dir()
        else Path(f"eval_{Path(args.data).stem}.json")
    )
    write_result(result, out)
    print(json.dumps({"accuracy": result.accuracy, "correct": result.correct, "n": result.n}))
    print(
        f"held-out exact-match accuracy: {result.accuracy:.3f} ({result.correct}/{result.n}); wrote {out}"
    )


def _cmd_train(args: argparse.Namespace) -> None:
    from rayalign.config import load_config

    stage = load_stage(args.stage)
    entry = stage.run(load_config(stage.config_cls, args.config, args.overrides))
    print(
        json.dumps(
            {
                "registered": entry.name,
                "path": entry.path,
                "step": getattr(entry, "step", 0),  # a dataset entry has no step
                "metrics": entry.metrics,
            }
        )
    )


def _cmd_scale(args: argparse.Namespace) -> None:
    import dataclasses

    import ray

    from actors.run_controller import NAMESPACE, find_controller

    ray.init(address=args.address or "auto", namespace=NAMESPACE, log_to_driver=False)
    controller = find_controller(args.run)
    if args.rollout_workers is not None:
        ray.get(controller.set_rollout_workers.remote(args.rollout_workers))
        print(f"run {args.run!r}: rollout workers -> {args.rollout_workers}")
    status = dataclasses.asdict(ray.get(controller.get_status.remote()))
    # One flat JSON object, as before RunStatus: the step's metrics beside the pool sizes.
    print(json.dumps({**status.pop("metrics"), **status}, default=str))


def _serving_config(args: argparse.Namespace):
    import os

    from rayalign.config import load_config
    from serving.config import API_KEY_ENV, ServingConfig

    overrides = []
    flags = {
        "registry": args.registry,
        "host": args.host,
        "port": args.port,
        "api_key": args.api_key or os.environ.get(API_KEY_ENV),
        "models": args.models.split(",") if args.models else None,
    }
    for key, value in flags.items():
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    if args.no_watch:
        overrides.append("watch_interval_s=null")
    if args.insecure_no_api_key:
        overrides.append("allow_no_api_key=true")
    return load_config(ServingConfig, args.config, overrides + args.overrides)


def _cmd_serve(args: argparse.Namespace) -> None:
    config = _serving_config(args)
    if args.print_config:
        import yaml

        from serving.deploy import serve_config

        print(yaml.safe_dump(serve_config(config), sort_keys=False), end="")
        return
    if args.action is None:
        from serving.endpoint import run_endpoint

        run_endpoint(config, address=args.address)
        return
    if not args.name:
        raise ValueError(f"rayalign serve {args.action} needs the model NAME")
    from rayalign.registry import Registry
    from serving.deploy import publish, remove
    from serving.endpoint import connect

    connect(args.address, 1, config)
    if args.action == "publish":
        entry = Registry(config.registry).get(args.name)
        if entry is None:
            raise ValueError(f"{args.name!r} is not registered in {config.registry}/registry")
        publish([entry], config)
        print(f"published {args.name!r} ({entry.kind}, {entry.path})")
    elif remove(args.name):
        print(f"removed {args.name!r}")
    else:
        raise ValueError(f"{args.name!r} is not served")


def _cmd_pipeline(args: argparse.Namespace) -> None:
    from pipelines.pipeline import run_pipeline, status_table
    from pipelines.pipeline_config import PipelineConfig
    from rayalign.config import load_config

    included = [f"include={json.dumps(args.with_stages.split(','))}"] if args.with_stages else []
    config = load_config(PipelineConfig, args.config, args.overrides + included)
    if args.pipeline_command == "status":
        print(status_table(config))
        return
    try:
        ok = run_pipeline(config, args.address)
    except KeyboardInterrupt:
        print("[pipeline] interrupted: rerun the same command to resume", file=sys.stderr)
        raise
    if not ok:
        raise SystemExit(1)


def _cmd_config_reference(args: argparse.Namespace) -> None:
    from pipelines.config_reference import render

    print(render(), end="")


def _cmd_demo(args: argparse.Namespace) -> None:
    from pipelines.demo import run_demo

    run_demo(
        args.out,
        port=args.port,
        serve=not args.no_serve,
        pipeline=Path(args.pipeline),
        include=tuple(args.with_stages.split(",")) if args.with_stages else (),
    )


def _add_set_option(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help_text
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rayalign", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "init-model", help="write a random-weight model directory with a local tokenizer"
    )
    p.add_argument("--preset", default="tiny", help="tiny | small | medium")
    p.add_argument("--out", required=True, help="output directory or storage URI (s3://...)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_init_model)

    data = sub.add_parser("data", help="task data").add_subparsers(
        dest="data_command", required=True
    )
    p = data.add_parser("make", help="generate a task's train/test splits in TRL formats")
    p.add_argument("--task", default="arithmetic", help="arithmetic | reversal")
    p.add_argument("--out", required=True, help="output directory or storage URI (s3://...)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument(
        "--rejected-per-prompt",
        type=int,
        default=1,
        help="distinct wrong answers paired with each question in the preference split",
    )
    p.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="task option, repeatable"
    )
    p.set_defaults(func=_cmd_data_make)

    p = sub.add_parser("eval", help="held-out exact-match accuracy with greedy decoding")
    p.add_argument("--model", required=True, help="HF model id or checkpoint directory")
    p.add_argument("--data", required=True, help="a prompts split, e.g. DIR/prompts_test.jsonl")
    p.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument(
        "--out", help="JSON result path (default: eval_<data>.json in the model directory)"
    )
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("train", help="run a training stage as a Ray Train job")
    p.add_argument("stage", choices=list(STAGE_NAMES))
    p.add_argument("--config", required=True, help="stage YAML config")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. training.max_steps=50",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "scale", help="resize the rollout pool of a running RL job (and show its status)"
    )
    p.add_argument("--run", required=True, help="run name of the RL job")
    p.add_argument("--rollout-workers", type=int, help="wanted number of generation workers")
    p.add_argument("--address", help="Ray cluster address (default: the running cluster)")
    p.set_defaults(func=_cmd_scale)

    p = sub.add_parser(
        "serve",
        help="serve a registry's checkpoints on one OpenAI-compatible endpoint (Ray Serve)",
        description=(
            "rayalign serve --registry DIR runs the endpoint until Ctrl-C, publishing checkpoints "
            "registered later; 'serve publish NAME' / 'serve remove NAME' change a running "
            "cluster's models; --print-config writes the Serve config YAML for `serve deploy`."
        ),
    )
    p.add_argument("action", nargs="?", choices=["publish", "remove"], help="change one model")
    p.add_argument("name", nargs="?", help="registry name of the model to publish or remove")
    p.add_argument("--registry", help="storage path holding the run registry")
    p.add_argument("--config", help="ServingConfig YAML (flags and KEY=VALUE override it)")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port (default 8000)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (or $RAYALIGN_API_KEY)")
    p.add_argument(
        "--insecure-no-api-key",
        action="store_true",
        help="serve a non-loopback --host without an API key (refused otherwise)",
    )
    p.add_argument("--models", help="comma-separated registry names to serve (default: all)")
    p.add_argument("--no-watch", action="store_true", help="do not follow registry changes")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else local)")
    _add_set_option(p, "ServingConfig override, repeatable (e.g. chat.replicas.max_replicas=2)")
    p.add_argument("--print-config", action="store_true", help="print a Serve config YAML and exit")
    p.set_defaults(func=_cmd_serve)

    pipeline = sub.add_parser(
        "pipeline", help="run a pipeline of stages as Ray jobs"
    ).add_subparsers(dest="pipeline_command", required=True)
    for name, help_text in (
        ("run", "run the unfinished stages, each as a Ray job, in dependency order"),
        ("status", "each stage's state, wall time, checkpoint and metrics"),
    ):
        p = pipeline.add_parser(name, help=help_text)
        p.add_argument("--config", required=True, help="pipeline YAML (configs/tiny/pipeline.yaml)")
        p.add_argument(
            "--address",
            help="Ray Jobs API of a cluster, e.g. http://127.0.0.1:8265 (default: a local cluster)",
        )
        p.add_argument(
            "--with",
            dest="with_stages",
            metavar="NAMES",
            help="comma-separated optional stages to include, e.g. rlaif,constitutional",
        )
        _add_set_option(p, "pipeline config override, e.g. storage_path=runs/other")
        p.set_defaults(func=_cmd_pipeline)

    p = sub.add_parser(
        "config-reference", help="print every config's fields as Markdown (docs/configuration.md)"
    )
    p.set_defaults(func=_cmd_config_reference)

    p = sub.add_parser(
        "demo", help="run the whole pipeline on a local cluster with the small model"
    )
    p.add_argument(
        "--out", default="runs/demo", help="storage path of the demo's runs and registry"
    )
    p.add_argument("--port", type=int, default=8000, help="port of the endpoint at the end")
    p.add_argument("--no-serve", action="store_true", help="stop after the comparison")
    p.add_argument("--pipeline", default="configs/tiny/pipeline.yaml", help="the pipeline to run")
    p.add_argument(
        "--with",
        dest="with_stages",
        metavar="NAMES",
        help="optional stages to add, e.g. rlaif,constitutional (safety tuning after DPO)",
    )
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "train":
        bad = [x for x in extra if "=" not in x or x.startswith("-")]
        if bad:
            parser.error(f"unrecognized arguments: {' '.join(bad)}")
        args.overrides = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        # SIGINT and SIGTERM stop the command's actors and jobs (their `finally` blocks),
        # which say what they kept; a second signal exits at once.
        with interrupts.stop_on_signals():
            args.func(args)
    except (ConfigError, DataError, ValueError) as err:
        print(f"rayalign: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        signum = interrupts.received()
        name = signal.Signals(signum).name if signum else "Ctrl-C"
        print(f"rayalign: stopped by {name}", file=sys.stderr)
        return interrupts.exit_code()
    return 0
