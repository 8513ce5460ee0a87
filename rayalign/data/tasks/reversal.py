"""String reversal: "Reverse the word 'kobam'." -> "mabok"."""

from __future__ import annotations

import random
import string
from typing import ClassVar

from pydantic import Field, model_validator

from rayalign.data.tasks.base import Example, TaskOptions


class ReversalOptions(TaskOptions):
    min_length: int = Field(3, ge=2, description="Shortest word to reverse, in characters.")
    max_length: int = Field(6, ge=2, le=64, description="Longest word to reverse, in characters.")
    alphabet: str = Field(
        string.ascii_lowercase, min_length=2, description="Characters the words are drawn from."
    )

    @model_validator(mode="after")
    def _lengths_ordered(self) -> ReversalOptions:
        if self.min_length > self.max_length:
            raise ValueError("min_length must be <= max_length")
        return self


class ReversalTask:
    """Reverse a random word; the answer is the reversed word only."""

    name: ClassVar[str] = "reversal"
    options_model: ClassVar[type[TaskOptions]] = ReversalOptions

    def __init__(self, options: ReversalOptions | None = None) -> None:
        self.options = options or ReversalOptions()

    def _word(self, rng: random.Random) -> str:
        n = rng.randint(self.options.min_length, self.options.max_length)
        return "".join(rng.choice(self.options.alphabet) for _ in range(n))

    def sample(self, rng: random.Random) -> Example:
        word = self._word(rng)
        return Example(question=f"Reverse the word '{word}'.", answer=word[::-1])

    def wrong_answer(self, rng: random.Random, example: Example) -> str:
        answer = example.answer
        for _ in range(100):
            chars = list(answer)
            i, j = rng.sample(range(len(chars)), 2)
            chars[i], chars[j] = chars[j], chars[i]
            if rng.random() < 0.5:
                chars[rng.randrange(len(chars))] = rng.choice(self.options.alphabet)
            wrong = "".join(chars)
            if wrong != answer:
                return wrong
        return answer + rng.choice(self.options.alphabet)
