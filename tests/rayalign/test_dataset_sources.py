"""Dataset sources: hub-layout folders, Arrow directories, splits, subsets, column
mapping and TRL's implicit prompts, read through the code a hub name goes through."""

from __future__ import annotations

import pytest

from rayalign.config import DataConfig, DatasetSource, load_config
from rayalign.data.datasets import extract_prompt, load_preference_rows, load_rows, load_validated
from rayalign.data.io import DataError
from tests.hub_layouts import SPLITS, rows, write_layout

FORMATS = {
    "capybara": "language_modeling",
    "ultrafeedback": "preference",
    "h4_ultrafeedback": "preference",
    "kto_mix": "unpaired",
}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub-layouts")
    return {layout: write_layout(layout, root) for layout in FORMATS}


@pytest.mark.parametrize("form", ["parquet", "arrow"])
@pytest.mark.parametrize("layout", list(FORMATS))
def test_every_split_reads_as_written(layouts, layout, form):
    for split in SPLITS[layout]:
        source = DatasetSource(path=str(layouts[layout][form]), split=split)
        got = load_validated(source, FORMATS[layout])
        want = rows(layout, split, len(got))
        assert [dict(r) for r in got] == want


@pytest.mark.parametrize("form", ["parquet", "arrow"])
def test_a_missing_split_lists_the_splits_there_are(layouts, form):
    """A held-out source defaults to `test`: H4's `test_prefs` is never silently swapped
    for another split."""
    path = str(layouts["h4_ultrafeedback"][form])
    with pytest.raises(DataError, match=r"test_prefs") as err:
        load_rows(path, "test")
    assert "h4_ultrafeedback" in str(err.value)
    assert len(load_rows(DatasetSource(path=path, split="test_prefs"), "test")) == 8


def test_implicit_prompts_are_extracted_as_trl_does(layouts):
    from trl.data_utils import maybe_extract_prompt

    for layout in ("ultrafeedback", "h4_ultrafeedback"):
        split = SPLITS[layout][0]
        for row in rows(layout, split, 6):
            ours = extract_prompt(row)
            theirs = maybe_extract_prompt(row)
            assert {k: ours[k] for k in ("prompt", "chosen", "rejected")} == {
                k: theirs[k] for k in ("prompt", "chosen", "rejected")
            }
            assert ours["prompt"] == [row["chosen"][0]]  # the user turn
            assert ours["score_chosen"] == row["score_chosen"]  # other columns stay
    # String answers: the prefix ends before the space, as in TRL.
    text = {"chosen": "Q: 2+2? A: 4", "rejected": "Q: 2+2? A: 5"}
    assert extract_prompt(text) == maybe_extract_prompt(text)
    answer = [{"role": "assistant", "content": "4"}]
    explicit = {"prompt": [{"role": "user", "content": "hi"}], "chosen": answer, "rejected": answer}
    assert extract_prompt(explicit) is explicit
    with pytest.raises(DataError, match="row 3: no prompt field"):
        extract_prompt({"chosen": "same", "rejected": "same"}, "row 3")


def test_held_out_preferences_from_a_hub_layout(layouts):
    source = DatasetSource(path=str(layouts["h4_ultrafeedback"]["parquet"]), split="test_prefs")
    got = load_preference_rows(source, "test")
    assert len(got) == 8 and all(r["prompt"][0]["role"] == "user" for r in got)
    assert all(len(r["chosen"]) == 1 for r in got)


def test_column_mapping_and_its_errors(layouts, tmp_path):
    path = str(layouts["kto_mix"]["arrow"])
    mapped = load_rows(DatasetSource(path=path, columns={"completion": "answer"}))
    assert "answer" in mapped.column_names and "completion" not in mapped.column_names
    with pytest.raises(DataError, match=r"maps 'question'.*columns: \['completion', 'label'"):
        load_rows(DatasetSource(path=path, columns={"question": "prompt"}))
    with pytest.raises(DataError, match=r"maps 'completion' to 'prompt', which the dataset"):
        load_rows(DatasetSource(path=path, columns={"completion": "prompt"}))
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text('{"question": "1+1?", "answer": "2"}\n')
    renamed = load_rows(
        DatasetSource(path=str(jsonl), columns={"question": "prompt", "answer": "ground_truth"})
    )
    assert renamed == [{"prompt": "1+1?", "ground_truth": "2"}]


def test_single_files_and_single_saved_datasets(layouts, tmp_path):
    from datasets import Dataset

    hub = layouts["capybara"]["parquet"]
    single = hub / "data" / "test-00000-of-00001.parquet"
    assert len(load_validated(str(single), "language_modeling")) == 8
    saved = tmp_path / "one"
    Dataset.from_list(rows("kto_mix", "train", 5)).save_to_disk(str(saved))
    assert len(load_validated(str(saved), "unpaired")) == 5
    with pytest.raises(DataError, match="a single saved dataset has no splits"):
        load_rows(DatasetSource(path=str(saved), split="test"))


def test_bad_rows_name_the_source_split_and_row(tmp_path):
    from datasets import Dataset, DatasetDict

    good = rows("kto_mix", "train", 3)
    bad = [*good, {**good[0], "completion": [{"role": "assistant", "content": " "}]}]
    path = tmp_path / "bad"
    DatasetDict({"train": Dataset.from_list(good), "test": Dataset.from_list(bad)}).save_to_disk(
        str(path)
    )
    with pytest.raises(
        DataError, match=r"bad \(split 'test'\), row 4, field 'completion'\[0\].content: empty"
    ):
        load_validated(str(path), "unpaired", "test")


def test_an_unknown_hub_name_is_named(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"no-such-org/no-such-dataset \(split 'train'\)"):
        load_rows("no-such-org/no-such-dataset")


def test_sources_in_config_files_and_overrides(tmp_path):
    """A source is a string or a mapping; `data.train.split=...` extends the string form."""
    from pydantic import BaseModel

    class Config(BaseModel):
        data: DataConfig

    config_file = tmp_path / "c.yaml"
    config_file.write_text(
        "data:\n  train: org/name\n  eval: {path: org/name, split: test_prefs}\n"
    )
    config = load_config(Config, config_file, ["data.train.split=train_prefs"])
    assert config.data.train == DatasetSource(path="org/name", split="train_prefs")
    assert config.data.eval.split == "test_prefs"
    plain = load_config(Config, config_file, [])
    assert plain.data.train == "org/name"
