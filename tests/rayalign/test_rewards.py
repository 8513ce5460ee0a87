import pytest

from rayalign.rewards import BUILTIN_REWARDS, exact_match, exact_match_reward


@pytest.mark.parametrize(
    ("completion", "truth", "expected"),
    [
        ("95", "95", 1.0),
        ("  95.\n", "95", 1.0),
        ("95 ", "95", 1.0),
        ("96", "95", 0.0),
        ("195", "95", 0.0),
        ("The answer is 95.", "95", 0.0),
        ("", "95", 0.0),
        ("olleh", "olleh", 1.0),
    ],
)
def test_exact_match(completion, truth, expected):
    assert exact_match_reward(completion, truth) == expected


def test_partial_credit_only_for_answer_among_other_words():
    assert exact_match_reward("The answer is 95.", "95", partial_credit=0.25) == 0.25
    assert exact_match_reward("The answer is 195.", "95", partial_credit=0.25) == 0.0
    assert exact_match_reward("-95", "95", partial_credit=0.25) == 0.0
    assert exact_match_reward("95", "95", partial_credit=0.25) == 1.0
    with pytest.raises(ValueError):
        exact_match_reward("1", "1", partial_credit=1.0)


def test_builtins_are_registered_and_check_aligned_lists():
    assert BUILTIN_REWARDS["exact_match"] is exact_match
    assert exact_match([], ["1", "2"], ground_truth=["1", "3"]) == [1.0, 0.0]
    with pytest.raises(ValueError):
        exact_match([], ["1", "2"], ground_truth=["1"])
