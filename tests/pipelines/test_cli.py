"""The CLI as a user types it: init-model -> data make -> eval, in fresh processes."""

import json
import subprocess
import sys


def _rayalign(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, timeout=600
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_init_data_eval_end_to_end(tmp_path):
    model, data = tmp_path / "m", tmp_path / "d"
    _rayalign("init-model", "--preset", "tiny", "--out", str(model))
    _rayalign(
        "data",
        "make",
        "--task",
        "arithmetic",
        "--out",
        str(data),
        "--n-train",
        "100",
        "--n-test",
        "20",
    )
    proc = _rayalign("eval", "--model", str(model), "--data", str(data / "prompts_test.jsonl"))
    printed = json.loads(proc.stdout.splitlines()[0])
    saved = json.loads((model / "eval_prompts_test.json").read_text())
    assert saved["n"] == printed["n"] == 20
    assert saved["accuracy"] == printed["accuracy"] == saved["correct"] / 20
    assert len(saved["samples"]) == 5 and saved["samples"][0]["prompt"].startswith("What is")


def test_bad_input_exits_2_with_message(tmp_path):
    proc = _rayalign(
        "data", "make", "--out", str(tmp_path), "--option", "max_operand=abc", check=False
    )
    assert proc.returncode == 2 and "max_operand" in proc.stderr
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "What is 1 + 1?", "ground_truth": "2"}\n{"prompt": "x"\n')
    proc = _rayalign("eval", "--model", str(tmp_path), "--data", str(bad), check=False)
    assert proc.returncode == 2 and f"{bad}, row 2: not valid JSON" in proc.stderr
