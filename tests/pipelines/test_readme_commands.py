"""The shell commands of the README and docs/guide.md, as written: each `rayalign`
command parses, each `train` command's config loads with its overrides, and the README's
first block (init-model -> data make -> eval) runs in fresh processes. Commands that need
a cluster or a finished demo are checked, not run (tests/e2e runs the job submission and
the serve CLI against real clusters)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.doc_commands import bash_blocks, doc_commands

ROOT = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "docs/guide.md")


def rayalign_commands() -> list[tuple[str, list[str]]]:
    return [
        (doc, words[words.index("rayalign") + 1 :])
        for doc in DOCS
        for words in doc_commands(doc)
        if "rayalign" in words
    ]


def test_every_rayalign_command_parses_and_its_train_config_loads():
    from pipelines.cli import build_parser
    from pipelines.stage_registry import load_stage
    from rayalign.config import load_config

    commands = rayalign_commands()
    assert len(commands) >= 20, commands
    trained = set()
    for doc, args in commands:
        parsed, extra = build_parser().parse_known_args(args)  # SystemExit: unknown flag
        assert not extra or parsed.command == "train", (doc, args)
        if parsed.command == "train":
            overrides = [*parsed.overrides, *extra]
            load_config(load_stage(parsed.stage).config_cls, ROOT / parsed.config, overrides)
            trained.add(parsed.stage)
    assert {"sft", "reward_model", "dpo", "kto", "ppo", "constitutional", "rlaif"} <= trained


def test_the_readme_cli_block_runs_as_written(tmp_path):
    """init-model, data make and eval exactly as the README shows them, with its /tmp
    paths moved into this test's directory."""
    block = next(b for b in bash_blocks("README.md") if b[0][:2] == ["rayalign", "init-model"])
    assert [words[1] for words in block] == ["init-model", "data", "data", "eval"]
    for words in block:
        args = [re.sub(r"^/tmp/", f"{tmp_path}/", w) for w in words[1:]]
        proc = subprocess.run(
            [sys.executable, "-m", "pipelines", *args],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=ROOT,
        )
        assert proc.returncode == 0, (words, proc.stderr[-3000:])
    printed = json.loads(proc.stdout.splitlines()[0])
    saved = json.loads((tmp_path / "m" / "eval_prompts_test.json").read_text())
    assert saved["n"] == printed["n"] > 0
    assert saved["accuracy"] == printed["accuracy"] == saved["correct"] / saved["n"]
    assert saved["samples"][0]["prompt"].startswith("What is")
    assert (tmp_path / "r" / "prompts_test.jsonl").is_file()


def test_job_entrypoints_in_the_docs_use_the_one_form():
    """Every `python -m` in the docs is `python -m pipelines train STAGE --config FILE`
    (docs/cluster.md's are checked in test_cluster_config.py)."""
    entrypoints = [
        words[words.index("-m") + 1 : words.index("-m") + 3]
        for doc in DOCS
        for words in doc_commands(doc)
        if "-m" in words and "python" in words[words.index("-m") - 1]
    ]
    assert entrypoints, "the README shows no job entrypoint"
    assert all(e == ["pipelines", "train"] for e in entrypoints), entrypoints
