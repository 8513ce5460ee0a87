"""Offline stages really learn, on Ray Train, from the random `small` model.

Measured on this 2-core CPU machine (small preset, operands 0..19, 1000 SFT steps):
see each test's threshold comment for the figures reached when it was written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.evaluate import evaluate
from rayalign.registry import Registry
from tests.conftest import stage_config

pytestmark = pytest.mark.slow


def _from_sft(stage_name: str, sft_entry, data, runs_dir, extra: list[str]):
    stage, config = stage_config(
        stage_name,
        [
            f"model.name_or_path={sft_entry.path}",
            f"data.prompts_eval={data / 'prompts_test.jsonl'}",
            f"data.preference_eval={data / 'preference_test.jsonl'}",
            f"run.storage_path={runs_dir}",
            *extra,
        ],
    )
    return stage.run(config)


def test_sft_raises_heldout_accuracy(sft_entry, small_model, easy_data, runs_dir):
    base = evaluate(str(small_model), str(easy_data / "prompts_test.jsonl")).accuracy
    sft = sft_entry.metrics["heldout_accuracy"]
    knows = sft_entry.metrics["heldout_contains_answer"]
    print(
        f"held-out exact match: base {base:.2f} -> sft {sft:.2f} (right answer in any format: {knows:.2f})"
    )
    # Half the SFT answers are sentences, so exact match measures the format as much as the
    # sums. After 500 steps, SFT seeds 0/1/2 here: 0.42/0.46/0.44 exact, 0.92/0.94/0.88 right
    # answer in any format (1.0 and 1.0 on bare answers only); the base model 0.00.
    assert base <= 0.05
    assert sft >= 0.25
    assert knows >= 0.75 and knows >= sft
    registered = Registry(runs_dir).get("sft")
    assert (
        registered.path == sft_entry.path and registered.stage == "sft" and registered.step == 500
    )
    # The checkpoint is a self-contained HF directory.
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"} <= {
        p.name for p in Path(sft_entry.path).iterdir()
    }


# The session's reward model (250 steps, about 2.5 minutes here) trains in this test's setup.
@pytest.mark.timeout(1800)
def test_reward_model_ranks_heldout_pairs(rm_entry):
    print("reward model:", rm_entry.metrics)
    assert rm_entry.kind == "reward"
    # Held out: 400 pairs (50 unseen questions x 8 wrong answers, some only 1 off); chance is
    # 0.5. Whole schedules at lr 3e-4 on the machine that set the config: 0.900/0.973/0.955
    # after 150/250/450 steps (the config stops at 250). On an AMD EPYC 2-core machine
    # (2026-12-02), from the same SFT checkpoint, 250 steps, run.seed 0/1/2 (score-head
    # initialisation and data order): 0.868/0.898/0.953, each reproducing to the last digit.
    # The old bound, 0.9, sat inside that spread (seed 0 failed); 0.8 is below all of it.
    assert rm_entry.metrics["heldout_pairwise_accuracy"] >= 0.8


@pytest.mark.parametrize("stage_name", ["dpo", "kto"])
def test_preference_stage_raises_margin_keeps_accuracy(stage_name, sft_entry, easy_data, runs_dir):
    train = "preference_train.jsonl" if stage_name == "dpo" else "unpaired_train.jsonl"
    entry = _from_sft(
        stage_name, sft_entry, easy_data, runs_dir, [f"data.train={easy_data / train}"]
    )
    before, after = sft_entry.metrics, entry.metrics
    print(f"{stage_name}: sft {before} -> {after}")
    # Both data sets answer with the bare number, so exact match rises; the sums themselves
    # must survive. Spread over SFT seeds 0/1/2 on this 2-thread CPU (2026-12-02; each seed
    # reproduces to the last digit; seeds stand in for another machine's numerics):
    #   SFT  exact 0.48/0.60/0.46  any format 1.00/1.00/0.92  margin 7.62/7.60/7.85
    #   KTO  exact 0.92/0.96/0.94  any format 0.98/0.96/0.94  margin 7.86/8.04/8.93
    #        (merged halfway back to SFT, configs/tiny/kto.yaml; unmerged: any format
    #        0.88/0.92/0.92, margin 10.0/9.4/10.6)
    #   DPO  exact 0.92/1.00/0.94  any format 0.92/1.00/0.94  margin 10.4/10.5/12.6
    # Closest to the bounds: exact +0.36 (bound +0.2); margin +0.24 for KTO (bound +0.1),
    # +2.8 for DPO (bound +0.5); any format -0.04 for KTO (bound -0.08: the 0.05
    # plus room for another machine's numerics), -0.08 for DPO (bound -0.15).
    margin, kept = {"dpo": (0.5, -0.15), "kto": (0.1, -0.08)}[stage_name]
    assert after["heldout_margin"] > before["heldout_margin"] + margin
    assert after["heldout_accuracy"] >= before["heldout_accuracy"] + 0.2
    assert after["heldout_contains_answer"] >= before["heldout_contains_answer"] + kept
    state = json.loads((Path(entry.path) / "trainer_state.json").read_text())
    logged = [h for h in state["log_history"] if "rewards/margins" in h or "rewards/chosen" in h]
    assert logged, "the trainer logged no reward metrics"


def test_bad_data_stops_before_training_and_keeps_checkpoints(
    sft_entry, easy_data, runs_dir, tmp_path
):
    from rayalign.data.io import DataError

    def snapshot():  # the run's files and its registry entry (other runs may register)
        root = runs_dir / "sft"
        files = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
        return files, Registry(runs_dir).get("sft")

    before = snapshot()
    bad = tmp_path / "bad.jsonl"
    lines = (easy_data / "sft_train.jsonl").read_text().splitlines()[:5]
    lines[3] = (
        lines[3]
        .replace('"content": "', '"content": "', 1)
        .replace('"assistant", "content": ', '"assistant", "text": ')
    )
    bad.write_text("\n".join(lines) + "\n")
    stage, config = stage_config(
        "sft",
        [
            f"model.name_or_path={sft_entry.path}",
            f"data.train={bad}",
            "data.eval=null",
            f"run.storage_path={runs_dir}",
        ],
    )
    with pytest.raises(DataError, match=rf"{bad}, row 4, field 'messages'\[1\]"):
        stage.run(config)
    assert snapshot() == before


def test_continued_pretraining_on_raw_text_lowers_heldout_loss(
    ray_local, small_model, easy_data, tmp_path
):
    from pipelines.measure import text_loss
    from pipelines.stage_registry import load_stage
    from rayalign.config import load_config

    stage = load_stage("sft")
    config = load_config(
        stage.config_cls,
        Path(__file__).resolve().parents[2] / "configs" / "tiny" / "pretrain.yaml",
        [
            f"model.name_or_path={small_model}",
            f"data.train={easy_data / 'text_train.jsonl'}",
            f"data.eval={easy_data / 'text_test.jsonl'}",
            f"run.storage_path={tmp_path}",
            "training.max_steps=40",
            "training.save_steps=40",
        ],
    )
    entry = stage.run(config)
    before = text_loss(str(small_model), str(easy_data / "text_test.jsonl"))
    after = entry.metrics["heldout_text_loss"]
    print(f"held-out loss on raw text: base {before:.3f} -> pretrained {after:.3f}")
    # When written: 7.02 -> 1.54 after 40 steps (the same to the last digit on reruns here).
    assert after < 0.6 * before
    assert entry.name == "pretrain" and entry.step == 40
