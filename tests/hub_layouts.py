"""Local datasets with the exact column layouts and split names of four hub datasets that
TRL's examples train on, written as the hub stores them and as `save_to_disk` does.

- `trl-lib/Capybara`: `source`, `messages` (conversations), `num_turns`; train/test (SFT).
- `trl-lib/ultrafeedback_binarized`: `chosen`, `rejected` (whole conversations: the
  prompt is implicit), `score_chosen`, `score_rejected`; train/test (DPO, reward model).
- `HuggingFaceH4/ultrafeedback_binarized`: `prompt` (a string), `prompt_id`, `chosen`,
  `rejected` (whole conversations), `messages`, `score_chosen`, `score_rejected`; splits
  `train_prefs`/`test_prefs` (and `train_sft`/`test_sft`).
- `trl-lib/kto-mix-14k`: `prompt`, `completion` (conversations), `label`; train/test (KTO).

The contents are arithmetic questions (nothing is downloaded); only the layout matters.
"""

from __future__ import annotations

import random
from pathlib import Path

LAYOUTS = ("capybara", "ultrafeedback", "h4_ultrafeedback", "kto_mix")
SPLITS = {
    "capybara": ("train", "test"),
    "ultrafeedback": ("train", "test"),
    "h4_ultrafeedback": ("train_prefs", "test_prefs", "train_sft", "test_sft"),
    "kto_mix": ("train", "test"),
}


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def _question(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(0, 19), rng.randint(0, 19)
    return f"What is {a} + {b}?", a + b


def _row(layout: str, rng: random.Random, n: int) -> dict:
    question, answer = _question(rng)
    wrong = answer + rng.choice([-3, -2, -1, 1, 2, 3])
    if layout == "capybara":
        messages = [_user(question), _assistant(str(answer))]
        if n % 3 == 0:  # some multi-turn rows, as Capybara has
            follow, follow_answer = _question(rng)
            messages += [_user(follow), _assistant(str(follow_answer))]
        return {"source": "arithmetic", "messages": messages, "num_turns": len(messages) // 2}
    if layout == "ultrafeedback":
        return {
            "chosen": [_user(question), _assistant(str(answer))],
            "rejected": [_user(question), _assistant(str(wrong))],
            "score_chosen": 9.0,
            "score_rejected": 2.0,
        }
    if layout == "h4_ultrafeedback":
        chosen = [_user(question), _assistant(str(answer))]
        return {
            "prompt": question,
            "prompt_id": f"{n:064x}",
            "chosen": chosen,
            "rejected": [_user(question), _assistant(str(wrong))],
            "messages": chosen,
            "score_chosen": 9.0,
            "score_rejected": 2.0,
        }
    label = n % 2 == 0
    return {
        "prompt": [_user(question)],
        "completion": [_assistant(str(answer if label else wrong))],
        "label": label,
    }


def rows(layout: str, split: str, n: int) -> list[dict]:
    rng = random.Random(f"{layout}/{split}")
    return [_row(layout, rng, i) for i in range(n)]


def _readme(splits: tuple[str, ...]) -> str:
    files = "".join(f"  - split: {s}\n    path: data/{s}-*\n" for s in splits)
    return f"---\nconfigs:\n- config_name: default\n  data_files:\n{files}---\n"


def write_layout(layout: str, root: Path, n_train: int = 24, n_test: int = 8) -> dict[str, Path]:
    """`layout` written twice under `root`: `hub/` as the hub stores it (one parquet file
    per split under `data/`, the split names in the README's `configs:`) and `arrow/`
    as `DatasetDict.save_to_disk` writes it. Returns {"parquet": ..., "arrow": ...}."""
    from datasets import Dataset, DatasetDict

    splits = {
        split: rows(layout, split, n_test if split.startswith("test") else n_train)
        for split in SPLITS[layout]
    }
    hub = root / layout / "hub"
    (hub / "data").mkdir(parents=True, exist_ok=True)
    data = DatasetDict({split: Dataset.from_list(r) for split, r in splits.items()})
    for split, dataset in data.items():
        dataset.to_parquet(str(hub / "data" / f"{split}-00000-of-00001.parquet"))
    (hub / "README.md").write_text(_readme(SPLITS[layout]))
    arrow = root / layout / "arrow"
    data.save_to_disk(str(arrow))
    return {"parquet": hub, "arrow": arrow}
