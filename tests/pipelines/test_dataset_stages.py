"""Each offline stage trains on a dataset laid out as its hub counterpart, stored as the hub
stores it (parquet per split, named in the README) and as an Arrow `save_to_disk` directory,
through the same loading code as a hub name (issue 16 item 2).

Every layout is read in both forms, split by split, in tests/rayalign/test_dataset_sources.py;
here each stage trains on one layout, the forms alternating (a stage run is ~20 s of Ray
Train start-up on two cores, whatever the data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import stage_config
from tests.hub_layouts import write_layout

# layout -> (stage, train split, held-out split, held-out measure that reads the layout, form)
CASES = {
    "capybara": ("sft", "train", "test", None, "parquet"),
    "ultrafeedback": ("dpo", "train", "test", "heldout_margin", "arrow"),
    "h4_ultrafeedback": (
        "reward_model",
        "train_prefs",
        "test_prefs",
        "heldout_pairwise_accuracy",
        "parquet",
    ),
    "kto_mix": ("kto", "train", "test", None, "arrow"),
}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub-layouts")
    return {layout: write_layout(layout, root, n_train=16, n_test=8) for layout in CASES}


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(CASES))
def test_stage_trains_on_a_hub_layout(ray_local, tiny_model, runs_dir, layouts, layout):
    stage_name, train_split, eval_split, measure, form = CASES[layout]
    path = layouts[layout][form]
    source = json.dumps({"path": str(path), "split": eval_split})
    overrides = [
        f"model.name_or_path={tiny_model}",
        f"data.train={path}",
        f"data.train.split={train_split}",
        f"data.eval={source}",
        "data.prompts_eval=null",
        f"data.preference_eval={source if measure == 'heldout_margin' else 'null'}",
        f"run.name=layout-{layout}-{form}",
        f"run.storage_path={runs_dir}",
        "training.max_steps=2",
        "training.global_batch_size=4",
        "training.save_steps=2",
        "training.logging_steps=1",
    ]
    if stage_name == "kto":
        overrides.append("training.merge_with_start=1")
    stage, config = stage_config(stage_name, overrides)
    entry = stage.run(config)

    state = json.loads((Path(entry.path) / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    # The held-out split was read and evaluated (eval_loss is logged at the save step).
    assert any("eval_loss" in log for log in state["log_history"])
    if measure:
        assert measure in entry.metrics
