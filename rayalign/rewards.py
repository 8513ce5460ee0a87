"""Verifiable reward functions for the task suite, in TRL's `reward_funcs` form.

`exact_match_reward` is the pure scalar rule: `rayalign eval`, the RL stage's held-out
accuracy and the tests import it, so "correct" means the same thing everywhere. The
built-in reward functions wrap it in the signature every reward function has here, the
one TRL's `GRPOTrainer(reward_funcs=...)` calls:

    f(prompts, completions, completion_ids, **columns) -> list[float | None]

where `columns` are the prompt dataset's other fields (e.g. `ground_truth`), one value
per completion, and completions are strings, or `[{"role": "assistant", "content": ...}]`
when the prompts are conversations.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

_TRAILING = ".!"


def normalize_answer(text: str) -> str:
    """Strip surrounding whitespace and trailing sentence punctuation, collapse spaces."""
    return " ".join(text.strip().rstrip(_TRAILING).split())


def exact_match_reward(completion: str, ground_truth: str, partial_credit: float = 0.0) -> float:
    """Reward 1.0 for exactly the answer, `partial_credit` if the answer is there among other text.

    Args:
        completion: the model's answer text (chat template and special tokens removed).
        ground_truth: the task's answer.
        partial_credit: in [0, 1). Given when the completion is not exactly the answer
            but contains it as a separate word, e.g. "The answer is 95." for "95". The
            default 0 makes the reward strict exact match, which is what `rayalign eval`
            reports; a small value (e.g. 0.2) gives RL a denser signal early on.

    Returns:
        1.0, `partial_credit` or 0.0.
    """
    if not 0.0 <= partial_credit < 1.0:
        raise ValueError(f"partial_credit must be in [0, 1), got {partial_credit}")
    answer = normalize_answer(ground_truth)
    got = normalize_answer(completion)
    if got == answer:
        return 1.0
    if partial_credit and re.search(rf"(?<![\w-]){re.escape(answer)}(?![\w])", got):
        return partial_credit
    return 0.0


def completion_text(completion: str | list[dict]) -> str:
    """The text of a completion in either of TRL's forms (a string, or chat messages)."""
    if isinstance(completion, str):
        return completion
    return str(completion[-1]["content"]) if completion else ""


def exact_match(
    prompts: Sequence[Any], completions: Sequence[Any], ground_truth: Sequence[Any], **_: Any
) -> list[float | None]:
    """1.0 where a completion is exactly its row's `ground_truth`, else 0.0; None (no
    opinion) for rows without one."""
    return [
        None if truth is None else exact_match_reward(completion_text(c), str(truth))
        for c, truth in zip(completions, ground_truth, strict=True)
    ]


def contains_answer(
    prompts: Sequence[Any], completions: Sequence[Any], ground_truth: Sequence[Any], **_: Any
) -> list[float | None]:
    """1.0 for exactly the answer, 0.5 for the answer inside other text (a sentence), else
    0.0: a denser signal than `exact_match` early in RL."""
    return [
        None if truth is None else exact_match_reward(completion_text(c), str(truth), 0.5)
        for c, truth in zip(completions, ground_truth, strict=True)
    ]


BUILTIN_REWARDS: dict[str, Callable[..., list[float | None]]] = {
    "exact_match": exact_match,
    "contains_answer": contains_answer,
}
