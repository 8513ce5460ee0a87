"""RewardScorer in-process: reward functions (built-in and a user's), a reward model over
HTTP, their weighted sum and each component in a typed ScoredBatch."""

from __future__ import annotations

import json
import math

import pytest

from actors.batches import ScoredBatch
from actors.reward_scorer import RewardScorer
from rayalign.models.remote_reward import RemoteRewardError
from rayalign.reward_functions import RewardFunctionError
from rayalign.rl_config import RemoteRewardConfig, RewardsConfig
from tests.http_stub import failing_server

PROMPT = [{"role": "user", "content": "1+1"}]


def test_scored_batch_holds_the_weighted_sum_and_each_component():
    scorer = RewardScorer(RewardsConfig(functions={"exact_match": 2.0}))
    out = scorer.score([PROMPT] * 2, ["2", "3"], [[1], [2]], [{"ground_truth": "2"}] * 2)
    assert isinstance(out, ScoredBatch)
    assert out.rewards.tolist() == [2.0, 0.0]
    assert out.components["exact_match"].tolist() == [1.0, 0.0]


def test_a_users_function_gets_messages_and_columns_and_none_is_left_out():
    config = RewardsConfig(
        functions={"exact_match": 1.0, "tests.custom_rewards:longer_than_truth": 0.5}
    )
    columns = [{"ground_truth": "2"}, {"ground_truth": None}, {"ground_truth": "2"}]
    out = RewardScorer(config).score([PROMPT] * 3, ["2", "22", "two"], [[]] * 3, columns)
    assert out.rewards.tolist() == [1.0, 0.0, 0.5]
    longer = out.components["tests.custom_rewards:longer_than_truth"].tolist()
    assert longer[0] == 0.0 and math.isnan(longer[1]) and longer[2] == 1.0


def test_unknown_function_is_named():
    with pytest.raises(RewardFunctionError, match="nonsense"):
        RewardScorer(RewardsConfig(functions={"nonsense": 1.0}))


def test_remote_reward_model_is_batched_per_prompt_retried_and_weighted(monkeypatch):
    monkeypatch.setenv("RM_KEY", "sekret")
    with failing_server() as server:
        server.script = [503]  # the first request is shed: retried
        config = RewardsConfig(
            functions={},
            remote=RemoteRewardConfig(
                base_url=server.url, model="rm", weight=0.5, api_key_env="RM_KEY"
            ),
        )
        other = [{"role": "user", "content": "2+2"}]
        out = RewardScorer(config).score(
            [PROMPT, PROMPT, other], ["a", "bbb", "cc"], [[]] * 3, [{}] * 3
        )
    assert out.components["remote_reward"].tolist() == [1.0, 3.0, 2.0]  # lengths, in order
    assert out.rewards.tolist() == [0.5, 1.5, 1.0]
    # One request per prompt (the first answered 503 was retried, whichever it was).
    assert server.requests == 3
    sent = {json.dumps(b["messages"]): b["completions"] for b in server.bodies}
    assert sent == {json.dumps(PROMPT): ["a", "bbb"], json.dumps(other): ["cc"]}
    assert all(h["Authorization"] == "Bearer sekret" for h in server.headers)


def test_remote_reward_model_errors_name_the_server():
    with failing_server() as server:
        server.then = 400
        config = RewardsConfig(
            functions={}, remote=RemoteRewardConfig(base_url=server.url, model="rm")
        )
        with pytest.raises(RemoteRewardError, match=rf"reward server {server.url}.*HTTP 400"):
            RewardScorer(config).score([PROMPT], ["a"], [[]], [{}])
