"""The task protocol: a generator of questions with one verifiable answer."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True)
class Example:
    """One task instance: the user's question and the single correct answer."""

    question: str
    answer: str


class TaskOptions(BaseModel):
    """Base for a task's options; each task subclasses it with its own fields."""

    model_config = ConfigDict(extra="forbid")

    verbose_rate: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description=(
            "Fraction of SFT answers written as a sentence ('The answer is 95.') instead of the bare "
            "answer. Above 0 it gives an SFT model that knows the answers but often breaks the "
            "'answer only' format, which exact-match rewards, preference data and the 'number only' "
            "principle then correct. Only the sft split changes; other splits keep bare answers."
        ),
    )


class Task(Protocol):
    """What a task provides to the data writer and the reward functions."""

    name: ClassVar[str]
    options_model: ClassVar[type[TaskOptions]]

    def sample(self, rng: random.Random) -> Example:
        """Draw one example."""
        ...

    def wrong_answer(self, rng: random.Random, example: Example) -> str:
        """A plausible but wrong answer to `example` (never equal to its answer)."""
        ...


def verbose_answer(answer: str) -> str:
    """The sentence form of an answer used for `verbose_rate`."""
    return f"The answer is {answer}."
