"""PolicyLearner in-process on the tiny model (no Ray, no vLLM): the validated `rl`
section drives the update, the loss terms it turns on show up in the metrics, micro-batches
and pi_old from sampling change no gradient, and the vLLM/learner gap is checked before
any weight moves."""

from __future__ import annotations

import math

import pytest
import torch

from actors.batches import TrainBatch
from actors.policy_learner import LogprobMismatchError, PolicyLearner
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
    batch.behaviour_logprobs = learner.logprobs(batch.prompt_ids, batch.completion_ids)
    metrics = learner.update(batch)
    assert {"entropy", "kl_in_loss", "clip_fraction", "grad_norm", "policy_loss"} <= set(metrics)
    assert any(
        not torch.equal(a, b) for a, b in zip(before, learner.policy.parameters(), strict=True)
    )
    # In-reward KL and no entropy bonus: neither term is in the loss.
    plain = PolicyLearner(str(tiny_model), RLConfig(learning_rate=1e-3, minibatch_size=2))
    assert not {"entropy", "kl_in_loss"} & set(plain.update(batch))


def _ragged_batch(learner: PolicyLearner, n: int = 6) -> TrainBatch:
    """n sequences with completions of 1..4 tokens; behaviour log-probs are the learner's."""
    g = torch.Generator().manual_seed(1)
    vocab = learner.policy.config.vocab_size
    lengths = [1 + i % 4 for i in range(n)]
    prompts = [torch.randint(4, vocab, (2 + i % 2,), generator=g).tolist() for i in range(n)]
    completions = [torch.randint(4, vocab, (k,), generator=g).tolist() for k in lengths]
    T = max(lengths)
    mask = torch.tensor([[1.0] * k + [0.0] * (T - k) for k in lengths])
    advantages = torch.randn(n, 1, generator=g) * mask
    return TrainBatch(
        prompt_ids=prompts,
        completion_ids=completions,
        mask=mask,
        behaviour_logprobs=learner.logprobs(prompts, completions),
        advantages=advantages,
        ref_logprobs=torch.full((n, T), -3.0) * mask,
    )


def _grads(learner: PolicyLearner) -> list[torch.Tensor]:
    return [p.grad.clone() for p in learner.policy.parameters()]


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"])
def test_micro_batches_accumulate_the_minibatch_gradient(tiny_model, aggregation):
    settings = dict(
        learning_rate=1e-3,
        minibatch_size=6,
        aggregation=aggregation,
        kl_in="loss",
        kl_coef=0.1,
        entropy_coef=0.01,
    )
    whole = PolicyLearner(str(tiny_model), RLConfig(**settings))
    batch = _ragged_batch(whole)
    whole_metrics = whole.update(batch)
    for micro in (1, 4):  # one sequence at a time, and uneven slices (4 + 2)
        split = PolicyLearner(str(tiny_model), RLConfig(**settings, micro_batch_size=micro))
        split_metrics = split.update(batch)
        for a, b in zip(_grads(whole), _grads(split), strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
        assert split_metrics["policy_loss"] == pytest.approx(whole_metrics["policy_loss"], abs=1e-6)


def test_gradient_checkpointing_changes_no_gradient(tiny_model):
    """Recomputed activations give the kept ones' gradients (memory: bench/learner_memory)."""
    settings = dict(learning_rate=1e-3, minibatch_size=6, entropy_coef=0.01)
    kept = PolicyLearner(str(tiny_model), RLConfig(**settings))
    recomputed = PolicyLearner(str(tiny_model), RLConfig(**settings, gradient_checkpointing=True))
    assert recomputed.policy.is_gradient_checkpointing and not kept.policy.is_gradient_checkpointing
    batch = _ragged_batch(kept)
    kept_metrics, recomputed_metrics = kept.update(batch), recomputed.update(batch)
    for a, b in zip(_grads(kept), _grads(recomputed), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    assert recomputed_metrics["policy_loss"] == pytest.approx(kept_metrics["policy_loss"], abs=1e-6)


def test_sampling_logprobs_as_pi_old_give_the_recomputed_update(tiny_model):
    settings = dict(learning_rate=1e-3, minibatch_size=3, epochs=1)
    sampled = PolicyLearner(str(tiny_model), RLConfig(**settings, old_logprobs="sampling"))
    recomputed = PolicyLearner(str(tiny_model), RLConfig(**settings, old_logprobs="recompute"))
    assert PolicyLearner(str(tiny_model), RLConfig(**settings)).old_logprobs_mode() == "sampling"
    assert (
        PolicyLearner(str(tiny_model), RLConfig(**{**settings, "epochs": 2})).old_logprobs_mode()
        == "recompute"
    )
    batch = _ragged_batch(sampled)
    calls = []
    original = sampled.logprobs
    sampled.logprobs = lambda *a, **k: calls.append(1) or original(*a, **k)
    a, b = sampled.update(batch), recomputed.update(batch)
    assert not calls  # no extra pass for pi_old
    # Two minibatches: the second one's ratio is against the sampling policy in both modes.
    for ga, gb in zip(_grads(sampled), _grads(recomputed), strict=True):
        torch.testing.assert_close(ga, gb, atol=1e-6, rtol=1e-4)
    assert a["logprob_mismatch"] < 1e-6 and b["logprob_mismatch"] < 1e-6


@pytest.mark.parametrize("mode", ["sampling", "recompute"])
def test_mismatch_stops_the_update_before_a_weight_moves(tiny_model, mode):
    learner = PolicyLearner(
        str(tiny_model), RLConfig(learning_rate=1e-3, minibatch_size=3, old_logprobs=mode)
    )
    batch = _ragged_batch(learner)
    batch.behaviour_logprobs = batch.behaviour_logprobs + 0.5 * batch.mask
    before = [p.detach().clone() for p in learner.policy.parameters()]
    with pytest.raises(LogprobMismatchError, match="differ by 0.5000"):
        learner.update(batch)
    assert all(torch.equal(a, b) for a, b in zip(before, learner.policy.parameters(), strict=True))
    # Samples from older weights are not held to the learner's log-probs.
    batch.fresh = torch.zeros(len(batch.prompt_ids), dtype=torch.bool)
    assert math.isnan(learner.update(batch)["logprob_mismatch"])


def test_lora_learner_trains_adapters_exports_merged_weights_and_resumes(tiny_model, tmp_path):
    from actors.weight_sync import export_weights
    from rayalign.config import LoraConfig

    # The batch is reused after updates: its behaviour log-probs go stale (gate off).
    rl = RLConfig(
        learning_rate=1e-2,
        minibatch_size=6,
        lora=LoraConfig(r=4, alpha=8),
        lora_sync="adapters",
        max_logprob_mismatch=1e9,
    )
    learner = PolicyLearner(str(tiny_model), rl)
    total = sum(p.numel() for p in learner.policy.parameters())
    assert 0 < learner.trainable_params < total / 5
    frozen = {
        n: p.detach().clone() for n, p in learner.policy.named_parameters() if "lora_" not in n
    }
    batch = _ragged_batch(learner)
    learner.update(batch)
    for name, p in learner.policy.named_parameters():  # only the adapters moved
        if "lora_" not in name:
            assert torch.equal(p, frozen[name]), name
    # What the engines get: the adapters alone (lora_sync: adapters) ...
    adapters = learner.weights()
    assert adapters and all(".lora_A." in k or ".lora_B." in k for k in adapters)
    assert sum(t.numel() for t in adapters.values()) == learner.trainable_params
    # ... or the merged weights (lora_sync: merged), under the base model's names.
    merged = PolicyLearner(str(tiny_model), rl.model_copy(update={"lora_sync": "merged"}))
    assert merged.weights().keys() == export_weights(learner.policy).keys()
    weights = export_weights(learner.policy)
    assert not any("lora_" in k or "base_layer" in k for k in weights)
    reference = learner.policy.merge_and_unload().state_dict()  # peft's own merge
    learner = PolicyLearner(str(tiny_model), rl)  # the merge above consumed the adapters
    learner.update(batch)
    weights = export_weights(learner.policy)
    for name, tensor in reference.items():
        torch.testing.assert_close(weights[name], tensor, atol=1e-6, rtol=1e-5)
    # A checkpoint: merged weights any engine loads, and adapters a resumed learner continues.
    learner.save(str(tmp_path / "ckpt"))
    assert (tmp_path / "ckpt" / "adapter" / "adapter_config.json").is_file()
    resumed = PolicyLearner(str(tmp_path / "ckpt"), rl)
    resumed.load_optimizer(str(tmp_path / "ckpt" / "optimizer.pt"))
    torch.testing.assert_close(
        resumed.logprobs(batch.prompt_ids, batch.completion_ids),
        learner.logprobs(batch.prompt_ids, batch.completion_ids),
    )
    plain = PolicyLearner(str(tmp_path / "ckpt"), RLConfig(learning_rate=1e-2, minibatch_size=6))
    torch.testing.assert_close(
        plain.logprobs(batch.prompt_ids, batch.completion_ids),
        learner.logprobs(batch.prompt_ids, batch.completion_ids),
        atol=1e-5,
        rtol=1e-4,
    )
    learner.update(batch)
    resumed.update(batch)  # the same step from the resumed state
    for a, b in zip(learner.weights().values(), resumed.weights().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
