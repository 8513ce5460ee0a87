"""The task protocol: a generator of questions with one verifiable answer."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar, Protocol

from pydantic import BaseModel, ConfigDict


@dataclass(frozen=True)
class Example:
    """One task instance: the user's question and the single correct answer."""

    question: str
    answer: str


class TaskOptions(BaseModel):
    """Base for a task's options; each task subclasses it with its own fields."""

    model_config = ConfigDict(extra="forbid")


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
