"""Reward functions as a user writes them for TRL's `reward_funcs`, for the tests to name
as `tests.custom_rewards:NAME` (some of them wrong on purpose)."""

from __future__ import annotations

import math


def says_the_answer(completions, **kwargs):
    """1.0 for an answer given in a sentence ("The answer is 95."), 0.0 for a bare one."""
    return [1.0 if "answer" in c[-1]["content"].lower() else 0.0 for c in completions]


def longer_than_truth(prompts, completions, ground_truth, **kwargs):
    """1.0 when the completion is longer than its ground truth; None without a truth."""
    return [
        None if t is None else float(len(c[-1]["content"]) > len(t))
        for c, t in zip(completions, ground_truth, strict=True)
    ]


def only_completions(completions):
    """Takes no **kwargs: cannot take the call (prompts=..., ground_truth=...)."""
    return [0.0] * len(completions)


def one_short(completions, **kwargs):
    return [0.0] * (len(completions) - 1)


def not_finite(completions, **kwargs):
    return [math.nan] * len(completions)


def raises(completions, **kwargs):
    raise KeyError("solution")


NOT_CALLABLE = 3
