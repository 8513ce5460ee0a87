import json
import random

import pytest

from rayalign.data.tasks import TASKS, build_task
from rayalign.data.tasks.splits import FORMATS, SPLITS, write_task_data


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_same_seed_same_files_other_seed_differs(tmp_path, name):
    task = build_task(name)
    write_task_data(task, tmp_path / "a", seed=3, n_train=50, n_test=10)
    write_task_data(task, tmp_path / "b", seed=3, n_train=50, n_test=10)
    write_task_data(task, tmp_path / "c", seed=4, n_train=50, n_test=10)
    for fmt in FORMATS:
        for split in SPLITS:
            name_ = f"{fmt}_{split}.jsonl"
            assert (tmp_path / "a" / name_).read_bytes() == (tmp_path / "b" / name_).read_bytes()
    assert (tmp_path / "a" / "sft_train.jsonl").read_bytes() != (
        tmp_path / "c" / "sft_train.jsonl"
    ).read_bytes()


def test_arithmetic_answers_are_correct(arithmetic_data):
    rows = _read(arithmetic_data / "prompts_train.jsonl")
    assert len(rows) == 400
    for row in rows:
        question = row["prompt"][0]["content"]
        expr = question.removeprefix("What is ").removesuffix("?")
        a, op, b = expr.split(" ")
        expected = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        assert row["ground_truth"] == str(expected), question


def test_reversal_answers_are_correct(tmp_path):
    write_task_data(build_task("reversal"), tmp_path, n_train=30, n_test=5)
    for row in _read(tmp_path / "sft_train.jsonl"):
        word = row["messages"][0]["content"].split("'")[1]
        assert row["messages"][1]["content"] == word[::-1]


def test_formats_follow_trl_conversational_schemas(arithmetic_data):
    sft = _read(arithmetic_data / "sft_train.jsonl")[0]
    assert [m["role"] for m in sft["messages"]] == ["user", "assistant"]
    pref = _read(arithmetic_data / "preference_train.jsonl")
    for row in pref:
        assert set(row) == {"prompt", "chosen", "rejected"}
        assert row["prompt"][0]["role"] == "user"
        assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
        assert row["chosen"][0]["content"] != row["rejected"][0]["content"]
    unpaired = _read(arithmetic_data / "unpaired_train.jsonl")
    assert {type(r["label"]) for r in unpaired} == {bool}
    labels = [r["label"] for r in unpaired]
    assert 0.4 < sum(labels) / len(labels) < 0.6
    prompts = {
        r["prompt"][0]["content"]: r["ground_truth"]
        for r in _read(arithmetic_data / "prompts_train.jsonl")
    }
    for r in unpaired:
        assert (r["completion"][0]["content"] == prompts[r["prompt"][0]["content"]]) == r["label"]
    # Raw text for continued pretraining: each question with its bare answer, no template.
    text = [r["text"] for r in _read(arithmetic_data / "text_train.jsonl")]
    assert text == [f"{q} {a}" for q, a in prompts.items()]


def test_test_questions_never_in_train(arithmetic_data):
    train = {r["prompt"][0]["content"] for r in _read(arithmetic_data / "prompts_train.jsonl")}
    test = {r["prompt"][0]["content"] for r in _read(arithmetic_data / "prompts_test.jsonl")}
    assert len(test) == 50 and not train & test


def test_manifest_records_provenance(arithmetic_data):
    manifest = json.loads((arithmetic_data / "manifest.json").read_text())
    assert manifest["task"] == "arithmetic" and manifest["seed"] == 0
    assert manifest["options"]["max_operand"] == 99
    assert all((arithmetic_data / f).exists() for f in manifest["files"].values())


def test_task_options_are_validated():
    with pytest.raises(ValueError, match="max_operand"):
        build_task("arithmetic", {"max_operand": "lots"})
    with pytest.raises(ValueError, match="unknown task 'sorting'"):
        build_task("sorting")
    with pytest.raises(ValueError, match="bogus"):
        build_task("reversal", {"bogus": 1})


def test_too_small_task_space_is_a_clear_error(tmp_path):
    task = build_task("arithmetic", {"max_operand": 2, "ops": "+"})
    with pytest.raises(ValueError, match="distinct examples"):
        write_task_data(task, tmp_path, n_train=100, n_test=5)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_wrong_answers_are_wrong(name):
    task, rng = build_task(name), random.Random(0)
    for _ in range(300):
        ex = task.sample(rng)
        assert task.wrong_answer(rng, ex) != ex.answer


def test_verbose_rate_changes_only_sft_answers(tmp_path):
    task = build_task("arithmetic", {"verbose_rate": 0.5})
    write_task_data(task, tmp_path, n_train=400, n_test=10)
    sft = [r["messages"][1]["content"] for r in _read(tmp_path / "sft_train.jsonl")]
    truths = [r["ground_truth"] for r in _read(tmp_path / "prompts_train.jsonl")]
    verbose = [a == f"The answer is {t}." for a, t in zip(sft, truths, strict=True)]
    bare = [a == t for a, t in zip(sft, truths, strict=True)]
    assert all(v or b for v, b in zip(verbose, bare, strict=True))
    assert 0.4 < sum(verbose) / len(verbose) < 0.6
    assert all(
        r["chosen"][0]["content"] == t
        for r, t in zip(_read(tmp_path / "preference_train.jsonl"), truths, strict=True)
    )


def test_rejected_per_prompt_pairs_each_question_with_distinct_wrong_answers(tmp_path):
    task = build_task("arithmetic", {"max_operand": 19, "ops": "+"})
    one, four = tmp_path / "one", tmp_path / "four"
    write_task_data(task, one, seed=3, n_train=60, n_test=10)
    manifest = write_task_data(task, four, seed=3, n_train=60, n_test=10, rejected_per_prompt=4)
    assert manifest["rejected_per_prompt"] == 4
    for split in SPLITS:
        # Same questions either way; four pairs per question, each rejected answer wrong.
        assert _read(one / f"prompts_{split}.jsonl") == _read(four / f"prompts_{split}.jsonl")
        pairs = _read(four / f"preference_{split}.jsonl")
        questions = [r["prompt"][0]["content"] for r in _read(one / f"prompts_{split}.jsonl")]
        assert len(pairs) == 4 * len(questions)
        by_question: dict[str, set[str]] = {}
        for r in pairs:
            assert r["rejected"][0]["content"] != r["chosen"][0]["content"]
            by_question.setdefault(r["prompt"][0]["content"], set()).add(
                r["rejected"][0]["content"]
            )
        assert set(by_question) == set(questions)
        assert all(len(wrong) == 4 for wrong in by_question.values())
    with pytest.raises(ValueError, match="rejected_per_prompt"):
        write_task_data(task, tmp_path / "zero", rejected_per_prompt=0)
