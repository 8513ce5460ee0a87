"""Reward functions by name: resolved, signature-checked, called and checked, combined."""

from __future__ import annotations

import pytest

from rayalign.reward_functions import RewardFunctionError, resolve, weighted_sum
from rayalign.rewards import exact_match

MSGS = [[{"role": "user", "content": "2+2"}]] * 3
COMPLETIONS = [[{"role": "assistant", "content": t}] for t in ("4", "The answer is 4.", "5")]


def _call(name: str, **columns):
    return resolve(name)(MSGS, COMPLETIONS, [[1], [2], [3]], columns)


def test_builtin_exact_match_takes_trls_call_and_gives_no_opinion_without_truth():
    fn = resolve("exact_match")
    assert fn.fn is exact_match
    fn.check_signature(["ground_truth", "difficulty"])
    assert _call("exact_match", ground_truth=["4", "4", None]) == [1.0, 0.0, None]
    assert _call("contains_answer", ground_truth=["4", "4", "4"]) == [1.0, 0.5, 0.0]
    # Plain-string completions (a dataset of string prompts) are read the same way.
    assert exact_match(["2+2"], ["4"], ground_truth=["4"]) == [1.0]


def test_a_users_function_is_imported_and_called_with_the_dataset_columns():
    assert _call("tests.custom_rewards:says_the_answer") == [0.0, 1.0, 0.0]
    values = _call("tests.custom_rewards:longer_than_truth", ground_truth=["4", None, "5"])
    assert values == [0.0, None, 0.0]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nonsense", "not a built-in .*exact_match.* 'package.module:function'"),
        ("tests.no_such_module:f", "cannot import 'tests.no_such_module'.*ModuleNotFoundError"),
        ("tests.custom_rewards:missing", "tests.custom_rewards has no 'missing'"),
        ("tests.custom_rewards:NOT_CALLABLE", "'NOT_CALLABLE' is a int, not a callable"),
    ],
)
def test_what_cannot_be_resolved_is_named(name, message):
    with pytest.raises(RewardFunctionError, match=f"reward function '{name}': {message}"):
        resolve(name)


def test_a_signature_that_cannot_take_the_call_is_named_with_the_call():
    fn = resolve("tests.custom_rewards:only_completions")
    with pytest.raises(RewardFunctionError) as err:
        fn.check_signature(["ground_truth"])
    text = str(err.value)
    assert "'tests.custom_rewards:only_completions'" in text
    assert "prompts=..., completions=..., completion_ids=..., ground_truth=..." in text
    assert "**kwargs" in text


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("one_short", "returned 2 values for 3 completions"),
        ("not_finite", "returned nan for completion 0; rewards must be finite numbers"),
        ("raises", "raised KeyError: 'solution'"),
    ],
)
def test_bad_values_and_exceptions_are_named(name, message):
    spec = f"tests.custom_rewards:{name}"
    with pytest.raises(RewardFunctionError, match=f"reward function '{spec}' {message}"):
        _call(spec)


def test_values_that_are_not_a_list_or_not_numbers_are_refused():
    fn = resolve("exact_match")
    bad = [lambda **_: 1.0, lambda **_: "1", lambda **_: [True, 0.0, 0.0], lambda **_: ["1"] * 3]
    for body in bad:
        with pytest.raises(RewardFunctionError, match="reward function 'exact_match'"):
            type(fn)("exact_match", body)(MSGS, COMPLETIONS, [[]] * 3, {})


def test_weighted_sum_leaves_out_no_opinion_like_trls_nansum():
    parts = {"a": [1.0, None, None], "b": [0.5, 0.5, None]}
    assert weighted_sum(parts, {"a": 2.0, "b": -1.0}) == [1.5, -0.5, 0.0]
