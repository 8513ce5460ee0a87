"""RewardScorer with verifiable reward functions, in-process: a typed ScoredBatch."""

from __future__ import annotations

import pytest

from actors.batches import ScoredBatch
from actors.reward_scorer import RewardScorer


def test_scored_batch_holds_the_weighted_sum_and_each_component():
    scorer = RewardScorer(functions={"exact_match": 2.0})
    out = scorer.score([[{"role": "user", "content": "1+1"}]] * 2, ["2", "3"], ["2", "2"])
    assert isinstance(out, ScoredBatch)
    assert out.rewards.tolist() == [2.0, 0.0]
    assert out.components["exact_match"].tolist() == [1.0, 0.0]


def test_unknown_function_is_named():
    with pytest.raises(ValueError, match="nonsense"):
        RewardScorer(functions={"nonsense": 1.0})
