"""The bundled task suite: tasks with verifiable answers, and their registry.

Add a task by writing a class that follows `rayalign.data.tasks.base.Task` and
listing it in `TASKS`.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from rayalign.data.tasks.arithmetic import ArithmeticTask
from rayalign.data.tasks.base import Example, Task, TaskOptions
from rayalign.data.tasks.reversal import ReversalTask

TASKS: dict[str, type] = {ArithmeticTask.name: ArithmeticTask, ReversalTask.name: ReversalTask}

__all__ = ["TASKS", "Example", "Task", "TaskOptions", "build_task"]


def build_task(name: str, options: dict[str, Any] | None = None) -> Task:
    """Instantiate the task `name` with validated `options`.

    Raises:
        ValueError: unknown task name or invalid option, naming which.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    cls = TASKS[name]
    try:
        parsed = cls.options_model(**(options or {}))
    except ValidationError as err:
        problems = "; ".join(
            f"option '{'.'.join(map(str, e['loc']))}': {e['msg']}" for e in err.errors()
        )
        raise ValueError(f"task {name!r}: {problems}") from None
    return cls(parsed)
