"""Spread of the offline stages' learning figures over SFT seeds, in the tests' setup
(tests/pipelines/test_offline_stages.py), for the figures written beside its thresholds.
Not part of `make bench`: each SFT seed trains 500 steps (~8 minutes on 2 cores).

    python -m bench.learning_spread JOB [JOB ...]      one training at a time
    python -m bench.learning_spread report

JOB is `sft:SEED` or `STAGE:SEED:TAG[:key=value;key=value...]`, STAGE being dpo or kto:
the stage runs from the SFT checkpoint of SEED (trained with run.seed=SEED) exactly as
tests/pipelines/test_offline_stages.py::_from_sft does, plus the given overrides, e.g.
`kto:2:uw05:kto.undesirable_weight=0.5`. Every result (metrics, steps, wall time) is
appended to $RAYALIGN_SPREAD_DIR/results.jsonl (default /tmp/rayalign-spread).
`queue` runs the jobs of queue.txt there as they are added. `report` prints the
table of results.jsonl.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

for k, v in {
    "RAY_AUTH_MODE": "disabled",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
}.items():
    os.environ.setdefault(k, v)

ROOT = Path(os.environ.get("RAYALIGN_SPREAD_DIR", "/tmp/rayalign-spread"))
RESULTS = ROOT / "results.jsonl"
QUEUE = ROOT / "queue.txt"
MODEL = ROOT / "models" / "small"
DATA = ROOT / "data" / "easy"
EASY_ARITHMETIC = {"max_operand": 19, "ops": "+", "verbose_rate": 0.5}


def prepare() -> None:
    from rayalign.data.tasks import build_task
    from rayalign.data.tasks.splits import write_task_data
    from rayalign.models.factory import init_model

    if not (MODEL / "config.json").exists():
        init_model("small", MODEL, seed=0)
    if not (DATA / "prompts_test.jsonl").exists():
        write_task_data(
            build_task("arithmetic", EASY_ARITHMETIC), DATA, seed=0, n_train=350, n_test=50
        )


def runs_dir(seed: int) -> Path:
    return ROOT / f"runs-s{seed}"


def sft_result(seed: int) -> dict:
    return json.loads((runs_dir(seed) / "sft" / "result.json").read_text())


def run(stage_name: str, overrides: list[str]) -> tuple[dict, float]:
    from tests.conftest import stage_config

    stage, config = stage_config(stage_name, overrides)
    t0 = time.time()
    entry = stage.run(config)
    return entry.__dict__, time.time() - t0


def train_runtime(path: str) -> float | None:
    state = json.loads((Path(path) / "trainer_state.json").read_text())
    for h in reversed(state["log_history"]):
        if "train_runtime" in h:
            return float(h["train_runtime"])
    return None


def job(spec: str) -> None:
    parts = spec.split(":", 3)
    stage_name, seed = parts[0], int(parts[1])
    if stage_name == "sft":
        tag, extra = "base", []
        if (runs_dir(seed) / "sft" / "result.json").exists():
            print(f"sft seed {seed} already done", flush=True)
            return
        overrides = [
            f"model.name_or_path={MODEL}",
            f"data.train={DATA / 'sft_train.jsonl'}",
            "data.eval=null",
            f"data.prompts_eval={DATA / 'prompts_test.jsonl'}",
            f"data.preference_eval={DATA / 'preference_test.jsonl'}",
            f"run.storage_path={runs_dir(seed)}",
            f"run.seed={seed}",
        ]
    else:
        tag = parts[2]
        extra = [o for o in (parts[3].split(";") if len(parts) > 3 else []) if o]
        train = "preference_train.jsonl" if stage_name == "dpo" else "unpaired_train.jsonl"
        overrides = [
            f"model.name_or_path={sft_result(seed)['path']}",
            f"data.prompts_eval={DATA / 'prompts_test.jsonl'}",
            f"data.preference_eval={DATA / 'preference_test.jsonl'}",
            f"run.storage_path={runs_dir(seed)}",
            f"data.train={DATA / train}",
            # A fresh run name per setting: the same name would resume the old run.
            f"run.name={stage_name}-{tag}",
            *extra,
        ]
    entry, wall = run(stage_name, overrides)
    runtime = train_runtime(entry["path"])
    record = {
        "stage": stage_name,
        "seed": seed,
        "tag": tag,
        "overrides": extra,
        "step": entry["step"],
        "wall_s": round(wall, 1),
        "train_runtime_s": runtime,
        "s_per_step": round(runtime / entry["step"], 3) if runtime else None,
        "metrics": entry["metrics"],
    }
    if stage_name != "sft":
        before, after = sft_result(seed)["metrics"], entry["metrics"]
        record["asserts"] = {
            "margin": after["heldout_margin"] > before["heldout_margin"] + 0.5,
            "exact": after["heldout_accuracy"] >= before["heldout_accuracy"] + 0.2,
            "contains_0.10": after["heldout_contains_answer"]
            >= before["heldout_contains_answer"] - 0.1,
            "contains_0.05": after["heldout_contains_answer"]
            >= before["heldout_contains_answer"] - 0.05 - 1e-9,
        }
    with RESULTS.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print("RESULT", json.dumps(record), flush=True)


def report() -> None:
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    print(f"{'stage':5} {'tag':14} seed  exact contains margin  s/step  asserts")
    for r in rows:
        m = r["metrics"]
        a = r.get("asserts", {})
        flags = " ".join(k for k, v in a.items() if not v)
        print(
            f"{r['stage']:5} {r['tag']:14} {r['seed']:4} {m['heldout_accuracy']:6.2f} "
            f"{m['heldout_contains_answer']:8.2f} {m['heldout_margin']:6.2f} "
            f"{r['s_per_step'] or 0:7.3f}  {'ok' if a and not flags else ('FAIL ' + flags if a else '')}"
        )


def main(argv: list[str]) -> None:
    if argv == ["report"]:
        report()
        return
    import ray

    ROOT.mkdir(parents=True, exist_ok=True)
    prepare()
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    try:
        for spec in argv if argv != ["queue"] else queued():
            print(f"JOB START {spec} at {time.strftime('%H:%M:%S')}", flush=True)
            try:
                job(spec)
            except Exception as e:  # keep going with the next job
                print(f"JOB FAILED {spec}: {e!r}", flush=True)
    finally:
        ray.shutdown()


def queued(idle_s: float = 900):
    """Jobs popped one at a time from QUEUE (one a line; edit it while this runs); stops
    after `idle_s` with the file empty."""
    waited = 0.0
    while waited < idle_s:
        lines = [line.strip() for line in QUEUE.read_text().splitlines()] if QUEUE.exists() else []
        lines = [line for line in lines if line and not line.startswith("#")]
        if not lines:
            time.sleep(10)
            waited += 10
            continue
        waited = 0.0
        QUEUE.write_text("\n".join(lines[1:]) + "\n")
        yield lines[0]


if __name__ == "__main__":
    main(sys.argv[1:])
