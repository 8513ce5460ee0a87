"""Write a task's train/test splits in TRL's standard conversational formats.

Files written to the output directory, each as `<format>_<split>.jsonl`:

- `sft`: `{"messages": [user, assistant]}`
- `preference`: `{"prompt": [user], "chosen": [assistant], "rejected": [assistant]}`
- `unpaired` (KTO): `{"prompt": [user], "completion": [assistant], "label": bool}`
- `prompts` (RL and eval): `{"prompt": [user], "ground_truth": str}`
- `text` (continued pretraining): `{"text": "<question> <answer>"}`, raw text with no chat
  template, the bare answer after the question

plus `manifest.json` recording the task, its options, the seed and the counts.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from rayalign.data.io import write_jsonl
from rayalign.data.tasks import Task
from rayalign.data.tasks.base import Example, verbose_answer

FORMATS = ("sft", "preference", "unpaired", "prompts", "text")
SPLITS = ("train", "test")


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _wrong_answers(task: Task, rng: random.Random, ex: Example, first: str, k: int) -> list[str]:
    """`k` distinct wrong answers starting with `first` (fewer if the task has no more)."""
    wrong = [first]
    for _ in range(20 * k):
        if len(wrong) == k:
            break
        candidate = task.wrong_answer(rng, ex)
        if candidate not in wrong:
            wrong.append(candidate)
    return wrong


def _rows(
    task: Task, rng: random.Random, examples: list[Example], rejected_per_prompt: int = 1
) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {f: [] for f in FORMATS}
    for i, ex in enumerate(examples):
        wrong = task.wrong_answer(rng, ex)
        verbose = rng.random() < task.options.verbose_rate
        sft_answer = verbose_answer(ex.answer) if verbose else ex.answer
        rows["sft"].append({"messages": _user(ex.question) + _assistant(sft_answer)})
        for rejected in _wrong_answers(task, rng, ex, wrong, rejected_per_prompt):
            rows["preference"].append(
                {
                    "prompt": _user(ex.question),
                    "chosen": _assistant(ex.answer),
                    "rejected": _assistant(rejected),
                }
            )
        # Alternate desirable/undesirable so KTO sees a balanced split.
        good = i % 2 == 0
        rows["unpaired"].append(
            {
                "prompt": _user(ex.question),
                "completion": _assistant(ex.answer if good else wrong),
                "label": good,
            }
        )
        rows["prompts"].append({"prompt": _user(ex.question), "ground_truth": ex.answer})
        rows["text"].append({"text": f"{ex.question} {ex.answer}"})
    return rows


def draw_examples(task: Task, rng: random.Random, n: int, exclude: set[str]) -> list[Example]:
    """Draw `n` examples with distinct questions, none of them in `exclude`."""
    examples: list[Example] = []
    seen = set(exclude)
    attempts = 0
    while len(examples) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(
                f"task {task.name!r} could only produce {len(examples)} distinct examples of the "
                f"{n} asked for; widen its options (e.g. a larger max_operand) or ask for fewer"
            )
        ex = task.sample(rng)
        if ex.question in seen:
            continue
        seen.add(ex.question)
        examples.append(ex)
    return examples


def write_task_data(
    task: Task,
    out_dir: str | Path,
    *,
    seed: int = 0,
    n_train: int = 2000,
    n_test: int = 200,
    rejected_per_prompt: int = 1,
) -> dict[str, Any]:
    """Generate train/test splits of `task` deterministically from `seed` into `out_dir`.

    Test questions never occur in train, and the questions depend only on `seed` and the
    counts. `rejected_per_prompt` > 1 pairs each question with that many distinct wrong
    answers in the `preference` split (more contrast for a reward model). Returns the
    manifest that is also written.
    """
    if rejected_per_prompt < 1:
        raise ValueError(f"rejected_per_prompt must be >= 1, got {rejected_per_prompt}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    test = draw_examples(task, rng, n_test, exclude=set())
    train = draw_examples(task, rng, n_train, exclude={ex.question for ex in test})
    files: dict[str, str] = {}
    for split, examples in (("train", train), ("test", test)):
        for fmt, rows in _rows(task, rng, examples, rejected_per_prompt).items():
            name = f"{fmt}_{split}.jsonl"
            write_jsonl(out / name, rows)
            files[f"{fmt}_{split}"] = name
    manifest = {
        "task": task.name,
        "options": task.options.model_dump(),
        "seed": seed,
        "n_train": n_train,
        "n_test": n_test,
        "rejected_per_prompt": rejected_per_prompt,
        "files": files,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
