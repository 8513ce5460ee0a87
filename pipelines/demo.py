"""`make demo`: the whole post-training pipeline on one local Ray cluster, then every stage
served on one OpenAI-compatible endpoint.

base model -> SFT -> reward model -> PPO, with DPO, KTO and GRPO branches from SFT, and
the optional safety stages (RLAIF, Constitutional AI: `--with rlaif,constitutional`) after
DPO (configs/tiny/pipeline.yaml), each stage a Ray job on a local `ray start --head`
cluster.
Then: a table comparing the stages on the same held-out questions, summary.json and
curves.png in the run directory, and the endpoint with the commands to query it, until
Ctrl-C.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pipelines.pipeline_config import PipelineConfig
from rayalign.config import load_config

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "configs" / "tiny" / "pipeline.yaml"
# The table's rows, in this order; every one but the reward model is served as a chat model.
STAGES = ["base", "pretrain", "sft", "rm", "dpo", "kto", "grpo", "ppo", "rlaif", "constitutional"]
COLUMNS = {
    "heldout_text_loss": "text loss",
    "heldout_accuracy": "accuracy",
    # The right number anywhere in the answer: SFT knows the sums but often answers in a
    # sentence, which exact match (accuracy) and the later stages' data and rewards reject.
    "heldout_contains_answer": "any format",
    "heldout_reward": "RL reward",
    "heldout_pairwise_accuracy": "RM pair acc",
    # Safety stages: how often the greedy answer breaks the constitution's number-only rule.
    "heldout_violation_number_only": "not num-only",
    "seconds": "wall s",
}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def summarize(storage: Path, state: dict) -> list[dict]:
    """One row per stage: held-out accuracy, held-out reward (RL), reward-model pairwise
    accuracy, wall time."""
    from rayalign.registry import Registry

    entries = Registry(storage).entries()
    rows = []
    for name in [n for n in STAGES if n in entries or n in state]:
        entry, st = entries.get(name), state.get(name)
        row = {"stage": name, **(entry.metrics if entry else {})}
        evals = _jsonl(storage / name / "eval.jsonl")
        if evals:
            row["heldout_reward"] = evals[-1]["heldout_reward"]
            row["heldout_reward_before"] = evals[0]["heldout_reward"]
        if st and st.started and st.finished:
            row["seconds"] = round(st.finished - st.started, 1)
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    # A column only where some stage has the figure.
    columns = {c: label for c, label in COLUMNS.items() if any(c in row for row in rows)}
    print("\n" + f"{'stage':<15}" + "".join(f"{label:>14}" for label in columns.values()))
    for row in rows:
        cells = "".join(
            f"{row[c]:>14.3f}" if isinstance(row.get(c), int | float) else f"{'-':>14}"
            for c in columns
        )
        print(f"{row['stage']:<15}{cells}")
    print(flush=True)


def plot_curves(storage: Path, rows: list[dict], out: Path) -> None:
    """Training loss of the offline stages, reward per RL step, held-out accuracy per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, reward_ax, acc_ax) = plt.subplots(1, 3, figsize=(16, 4.5))
    for name in ["sft", "rm", "dpo", "kto"]:
        state = storage / name / "final" / "trainer_state.json"
        if state.exists():
            log = [h for h in json.loads(state.read_text())["log_history"] if "loss" in h]
            loss_ax.plot([h["step"] for h in log], [h["loss"] for h in log], ".-", label=name)
    loss_ax.set(title="offline stages: training loss", xlabel="step", yscale="log")
    loss_ax.legend()
    for name in ["grpo", "ppo"]:
        metrics = _jsonl(storage / name / "metrics.jsonl")
        if metrics:
            reward_ax.plot([m["step"] for m in metrics], [m["reward"] for m in metrics], label=name)
    reward_ax.set(title="RL: mean reward per step", xlabel="step")
    reward_ax.legend()
    chat = [r for r in rows if "heldout_accuracy" in r]
    acc_ax.bar([r["stage"] for r in chat], [r["heldout_accuracy"] for r in chat], color="tab:green")
    acc_ax.set(title="held-out exact-match accuracy", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def print_usage(port: int, models: list[str]) -> None:
    url = f"http://127.0.0.1:{port}"
    print("[demo] query the stages (Ctrl-C stops the endpoint):")
    print(f"  curl -s {url}/v1/models")
    for model in models:
        body = json.dumps(
            {
                "model": model,
                "messages": [{"role": "user", "content": "What is 12 + 7?"}],
                "max_tokens": 8,
                "temperature": 0,
            }
        )
        print(
            f"  curl -s {url}/v1/chat/completions -H 'Content-Type: application/json' -d '{body}'"
        )
    print(
        "  python -c \"from openai import OpenAI; c = OpenAI(base_url='"
        + url
        + "/v1', api_key='-'); print(c.chat.completions.create(model='sft', "
        "messages=[{'role': 'user', 'content': 'What is 12 + 7?'}], max_tokens=8, temperature=0)"
        '.choices[0].message.content)"'
    )
    print(f"  playground: {url}/", flush=True)


# Logical CPUs of the demo's cluster: a stage's actors (up to 3) twice over, plus one per
# served engine and the ingress; they all share the machine's cores (Ray counts logically).
DEMO_CPUS = 24
# KV cache per served engine: 0.25 GiB holds ~65k tokens of the small model; vLLM's 1 GiB
# default would take 7 GiB for the demo's seven engines.
DEMO_KVCACHE_GIB = 0.25


class StagePublisher:
    """Puts each stage's checkpoint on the endpoint as soon as the pipeline registers it:
    engines start while later stages train (using the cores a stage leaves idle: process
    start-ups, the RL stages' phases) and the early stages can be queried before the end."""

    def __init__(self, storage: Path, serving, runner) -> None:
        from serving.deploy import RegistryWatch

        self.storage, self.runner = storage, runner
        self.watch = RegistryWatch(serving, missing_ok=True)
        self.reported: set[str] = set()

    def poll(self) -> None:
        from pipelines.pipeline import StageStatus
        from rayalign.registry import Registry
        from serving.deploy import deploy_failures

        for name, message in deploy_failures().items():  # say at once when one cannot start
            if name not in self.reported:
                self.reported.add(name)
                logger.warning(f"[serve] {name} failed to deploy: {message}")
        base = self.runner.state.stages.get("base")
        if (
            base
            and base.status == StageStatus.SUCCEEDED
            and Registry(self.storage).get("base") is None
        ):
            register_base(self.storage, measure=False)  # its accuracy comes after the pipeline
        added, _ = self.watch.sync(wait=False)
        if added:
            logger.info(
                f"[serve] deploying {', '.join(added)} on the endpoint while the pipeline goes on"
            )


def register_base(storage: Path, measure: bool = True) -> None:
    """Register the random base model as 'base' (with its held-out accuracy if `measure`)."""
    from pipelines.evaluate import evaluate
    from rayalign.registry import Registry, RegistryEntry

    base = str(storage / "base")
    metrics = {}
    if measure:
        accuracy = evaluate(base, str(storage / "data" / "prompts_test.jsonl")).accuracy
        metrics["heldout_accuracy"] = accuracy
    Registry(storage).register(RegistryEntry("base", "base", "chat", base, metrics=metrics))


def run_demo(
    out: str = "runs/demo",
    port: int = 8000,
    serve: bool = True,
    pipeline: Path = PIPELINE,
    include: tuple[str, ...] = (),
) -> list[dict]:
    """Run the pipeline's unfinished stages (and the optional ones in `include`), serving
    each stage as it finishes; compare every stage, then serve them all until Ctrl-C."""
    from pipelines.pipeline import PipelineRunner, status_table
    from rayalign.cluster import local_head_node
    from serving.config import ServingConfig
    from serving.deploy import RegistryWatch, start_endpoint
    from serving.endpoint import connect, serve_until_interrupted, shutdown

    storage = Path(out).resolve()
    config = load_config(
        PipelineConfig, pipeline, [f"storage_path={storage}", f"include={json.dumps(include)}"]
    )
    stages = {"base", *(s.name for s in config.active().stages)}
    chat = [n for n in STAGES if n in stages and n != "rm"]
    serving = ServingConfig(
        registry=str(storage),
        port=port,
        models=[*chat, "rm"],
        watch_interval_s=None,
        chat={"cpu_kvcache_gib": DEMO_KVCACHE_GIB},
    )
    with local_head_node(num_cpus=DEMO_CPUS) as head:
        logger.info(f"[demo] local Ray cluster up (dashboard and jobs API {head.jobs})")
        runner = PipelineRunner(config, head.jobs, local=True)
        publisher = None
        if serve:
            connect(head.gcs, len(serving.models), serving)
            # Not every deployment's options on the console.
            logging.getLogger("ray.serve").setLevel(logging.WARNING)
            logger.info(f"[serve] starting the ingress on {serving.host}:{port}")
            start_endpoint(serving, wait=False)
            publisher = StagePublisher(storage, serving, runner)
        try:
            if not runner.run(on_poll=publisher.poll if publisher else None):
                print(status_table(config))
                raise SystemExit("[demo] a stage failed; fix it and rerun `make demo` to resume")
            register_base(storage)  # again, now with its held-out accuracy
            rows = summarize(storage, runner.state.stages)
            print_table(rows)
            (storage / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
            plot_curves(storage, rows, storage / "curves.png")
            logger.info(f"[demo] wrote {storage / 'summary.json'} and {storage / 'curves.png'}")
        except BaseException:
            if publisher:
                shutdown(stop_serve=False)  # the cluster goes down with everything on it
            raise
        if serve:
            serve_until_interrupted(
                serving,
                RegistryWatch(serving),
                on_ready=lambda: print_usage(port, chat),
                stop_serve=False,
            )
    return rows
