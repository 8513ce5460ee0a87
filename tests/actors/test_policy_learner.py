"""PolicyLearner in-process on the tiny model (no Ray, no vLLM): the validated `rl`
section drives the update, and the loss terms it turns on show up in the metrics."""

from __future__ import annotations

import torch

from actors.batches import TrainBatch
from actors.policy_learner import PolicyLearner
from rayalign.rl_config import RLConfig


def _batch(vocab: int, completion_len: int = 3) -> TrainBatch:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab, (4, 2 + completion_len), generator=g).tolist()
    return TrainBatch(
        prompt_ids=[row[:2] for row in ids],
        completion_ids=[row[2:] for row in ids],
        mask=torch.ones(4, completion_len),
        behaviour_logprobs=torch.full((4, completion_len), -2.0),
        advantages=torch.tensor([[1.0], [-1.0], [0.5], [-0.5]]).expand(4, completion_len),
        ref_logprobs=torch.full((4, completion_len), -3.0),
    )


def test_update_follows_the_rl_section(tiny_model):
    rl = RLConfig(
        learning_rate=1e-3, minibatch_size=2, entropy_coef=0.01, kl_in="loss", kl_coef=0.1
    )
    learner = PolicyLearner(str(tiny_model), rl)
    before = [p.detach().clone() for p in learner.policy.parameters()]
    batch = _batch(learner.policy.config.vocab_size)
    metrics = learner.update(batch)
    assert {"entropy", "kl_in_loss", "clip_fraction", "grad_norm", "policy_loss"} <= set(metrics)
    assert any(
        not torch.equal(a, b) for a, b in zip(before, learner.policy.parameters(), strict=True)
    )
    # In-reward KL and no entropy bonus: neither term is in the loss.
    plain = PolicyLearner(str(tiny_model), RLConfig(learning_rate=1e-3, minibatch_size=2))
    assert not {"entropy", "kl_in_loss"} & set(plain.update(batch))
