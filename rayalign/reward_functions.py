"""Users' reward functions: resolved by name, checked, called and combined.

A reward function is a built-in name (`rayalign.rewards.BUILTIN_REWARDS`) or any
importable callable written `package.module:function` with TRL's `reward_funcs`
signature:

    f(prompts, completions, completion_ids, **columns) -> list[float | None]

Everything is passed by keyword, so a function names what it reads and takes `**kwargs`
for the rest; `columns` are the prompt dataset's fields other than `prompt`. `None` means
"no opinion" on that completion: the weighted sum leaves it out, as TRL's does. Every
failure (an import error, a signature that cannot take the call, an exception, a wrong
number of values, a non-finite value) is a `RewardFunctionError` naming the function.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rayalign.rewards import BUILTIN_REWARDS

# What every call passes besides the dataset's columns.
CALL_ARGUMENTS = ("prompts", "completions", "completion_ids")


class RewardFunctionError(ValueError):
    """A reward function could not be resolved, called, or returned unusable values."""


@dataclass(frozen=True)
class RewardFunction:
    """A resolved reward function: its configured name and the callable."""

    name: str
    fn: Callable[..., Any]

    def check_signature(self, columns: Sequence[str]) -> None:
        """Raise unless `fn` accepts the keyword call it will get for these dataset columns."""
        try:
            signature = inspect.signature(self.fn)
        except (TypeError, ValueError):
            return  # a builtin or C callable without a signature: the first call will tell
        names = [*CALL_ARGUMENTS, *columns]
        try:
            signature.bind(**dict.fromkeys(names))
        except TypeError as err:
            raise RewardFunctionError(
                f"reward function {self.name!r}: its signature {signature} cannot take the "
                f"call f({', '.join(f'{n}=...' for n in names)}) ({err}). Reward functions "
                "are called as TRL calls its reward_funcs, by keyword; take **kwargs for "
                "what the function does not use"
            ) from None

    def __call__(
        self,
        prompts: list[Any],
        completions: list[Any],
        completion_ids: list[list[int]],
        columns: dict[str, list[Any]],
    ) -> list[float | None]:
        """The function's values for these completions, checked (one finite float or None each)."""
        try:
            values = self.fn(
                prompts=prompts, completions=completions, completion_ids=completion_ids, **columns
            )
        except Exception as err:
            raise RewardFunctionError(
                f"reward function {self.name!r} raised {type(err).__name__}: {err}"
            ) from err
        return check_values(self.name, values, len(completions))


def check_values(name: str, values: Any, expected: int) -> list[float | None]:
    """`values` as a list of `expected` floats or None, or a RewardFunctionError saying why not."""
    if hasattr(values, "tolist"):  # a tensor or an array
        values = values.tolist()
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise RewardFunctionError(
            f"reward function {name!r} returned {type(values).__name__}; expected a list of "
            f"{expected} floats (or None)"
        )
    if len(values) != expected:
        raise RewardFunctionError(
            f"reward function {name!r} returned {len(values)} values for {expected} completions"
        )
    out: list[float | None] = []
    for i, value in enumerate(values):
        if value is None:
            out.append(None)
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if isinstance(value, bool | str) or not math.isfinite(number):
            raise RewardFunctionError(
                f"reward function {name!r} returned {value!r} for completion {i}; rewards "
                "must be finite numbers, or None for no opinion"
            )
        out.append(number)
    return out


def resolve(name: str) -> RewardFunction:
    """The reward function `name`: a built-in, or `package.module:function` imported."""
    if name in BUILTIN_REWARDS:
        return RewardFunction(name, BUILTIN_REWARDS[name])
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        raise RewardFunctionError(
            f"reward function {name!r}: not a built-in ({', '.join(sorted(BUILTIN_REWARDS))}) "
            "and not of the form 'package.module:function'"
        )
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as err:
        raise RewardFunctionError(
            f"reward function {name!r}: cannot import {module_name!r} ({type(err).__name__}: {err})"
        ) from err
    for part in attr.split("."):
        if not hasattr(target, part):
            raise RewardFunctionError(f"reward function {name!r}: {module_name} has no {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise RewardFunctionError(
            f"reward function {name!r}: {attr!r} is a {type(target).__name__}, not a callable"
        )
    return RewardFunction(name, target)


def weighted_sum(parts: dict[str, list[float | None]], weights: dict[str, float]) -> list[float]:
    """Per completion, the sum of weight x value over the parts with an opinion (None is
    left out, like TRL's nansum); 0.0 where no part has one."""
    size = len(next(iter(parts.values()))) if parts else 0
    return [
        sum(weights[k] * v[i] for k, v in parts.items() if v[i] is not None) for i in range(size)
    ]
