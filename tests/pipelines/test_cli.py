"""The CLI as a user types it (fresh processes, or `main` in this one where a check stops
before any work): bad input, the safety stages' checks, data to a bucket (the README's own
commands run in test_readme_commands.py)."""

import subprocess
import sys


def _rayalign(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines", *args], capture_output=True, text=True, timeout=600
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_bad_input_exits_2_with_message(tmp_path):
    proc = _rayalign(
        "data", "make", "--out", str(tmp_path), "--option", "max_operand=abc", check=False
    )
    assert proc.returncode == 2 and "max_operand" in proc.stderr
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "What is 1 + 1?", "ground_truth": "2"}\n{"prompt": "x"\n')
    proc = _rayalign("eval", "--model", str(tmp_path), "--data", str(bad), check=False)
    assert proc.returncode == 2 and f"{bad}, row 2: not valid JSON" in proc.stderr


def _safety_job(capsys, stage, *overrides):
    """A safety stage as its Ray job entrypoint runs it (python -m pipelines train <stage>),
    in this process: (exit code, stderr). These checks stop before Ray or a model, so a
    fresh process would add only its imports (12 s each on 2 cores)."""
    from pipelines.cli import main

    capsys.readouterr()
    code = main(["train", stage, "--config", f"configs/tiny/{stage}.yaml", *overrides])
    return code, capsys.readouterr().err


def test_safety_stages_reject_bad_input_before_any_work(tmp_path, capsys):
    code, err = _safety_job(capsys, "rlaif", "sampling.samples_per_prompt=1")
    assert code == 2 and "samples_per_prompt >= 2" in err

    constitution = tmp_path / "c.yaml"
    constitution.write_text("name: c\nprinciples:\n  - {name: a, critique_request: x}\n")
    code, err = _safety_job(capsys, "constitutional", f"constitution={constitution}")
    assert code == 2
    assert str(constitution) in err and "principles.0.revision_request" in err

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "What is 1 + 1?"}\n{"prompt": 7}\n')
    code, err = _safety_job(
        capsys, "rlaif", f"data.prompts={prompts}", f"run.storage_path={tmp_path}/runs"
    )
    assert code == 2 and f"{prompts}, row 2, field 'prompt': expected" in err
    assert not (tmp_path / "runs").exists()  # stopped before writing anything

    prompts.write_text('{"prompt": "What is 1 + 1?"}\n')
    code, err = _safety_job(
        capsys, "rlaif", f"data.prompts={prompts}", "rlaif.labeller.function=nope"
    )
    assert code == 2 and "'module:function'" in err


def test_data_make_writes_the_task_to_a_bucket(tmp_path):
    """`rayalign data make --out s3://...` (a local S3 server): the splits land in the
    bucket, the same as a local folder's, and nothing stays on the local disk."""
    from rayalign import storage
    from tests.s3_server import s3_server

    local = tmp_path / "local"
    args = ["data", "make", "--n-train", "30", "--n-test", "5"]
    _rayalign(*args, "--out", str(local))
    with s3_server():
        _rayalign(*args, "--out", "s3://rayalign/data")  # the server's env is inherited
        names = storage.list_names("s3://rayalign/data")
        assert names == sorted(p.name for p in local.iterdir())
        for name in names:
            assert storage.read_text(f"s3://rayalign/data/{name}") == (local / name).read_text()
