"""Verifiable reward functions for the task suite.

Pure functions of strings: the RL stages (reward scorers) and `rayalign eval`
import them, so "correct" means the same thing everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

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


def batch_exact_match(
    completions: Sequence[str], ground_truths: Sequence[str], partial_credit: float = 0.0
) -> list[float]:
    """`exact_match_reward` over aligned lists (one ground truth per completion)."""
    if len(completions) != len(ground_truths):
        raise ValueError(f"{len(completions)} completions but {len(ground_truths)} ground truths")
    return [
        exact_match_reward(c, g, partial_credit)
        for c, g in zip(completions, ground_truths, strict=True)
    ]


RewardFn = Callable[[Sequence[str], Sequence[str]], list[float]]

REWARD_FUNCTIONS: dict[str, RewardFn] = {
    "exact_match": batch_exact_match,
}
