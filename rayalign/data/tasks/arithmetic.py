"""Integer arithmetic: "What is 37 + 58?" -> "95"."""

from __future__ import annotations

import random
from typing import ClassVar

from pydantic import Field

from rayalign.data.tasks.base import Example, TaskOptions


class ArithmeticOptions(TaskOptions):
    max_operand: int = Field(
        99, ge=1, le=10**6, description="Operands are drawn from 0..max_operand."
    )
    ops: str = Field(
        "+-", pattern=r"^[+\-*]+$", description="Operators to draw from, a subset of '+-*'."
    )
    non_negative: bool = Field(
        True, description="For '-', order the operands so that the result is never negative."
    )


class ArithmeticTask:
    """Binary integer arithmetic whose answer is the result written in digits only."""

    name: ClassVar[str] = "arithmetic"
    options_model: ClassVar[type[TaskOptions]] = ArithmeticOptions

    def __init__(self, options: ArithmeticOptions | None = None) -> None:
        self.options = options or ArithmeticOptions()

    def sample(self, rng: random.Random) -> Example:
        a = rng.randint(0, self.options.max_operand)
        b = rng.randint(0, self.options.max_operand)
        op = rng.choice(self.options.ops)
        if op == "-" and self.options.non_negative and b > a:
            a, b = b, a
        result = {"+": a + b, "-": a - b, "*": a * b}[op]
        return Example(question=f"What is {a} {op} {b}?", answer=str(result))

    def wrong_answer(self, rng: random.Random, example: Example) -> str:
        correct = int(example.answer)
        delta = rng.choice([-10, -2, -1, 1, 2, 10]) * rng.randint(1, 3)
        wrong = correct + delta
        if self.options.non_negative and wrong < 0:
            wrong = correct + abs(delta)
        return str(wrong)
