"""RL math against hand-computed cases and against TRL's own formulas."""

import math

import pytest
import torch

from rayalign import rl_math as M


def test_masked_mean_and_aggregations():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert M.masked_mean(x, mask).item() == pytest.approx(10 / 4)
    assert M.aggregate_loss(x, mask, "token_mean").item() == pytest.approx(2.5)
    assert M.aggregate_loss(x, mask, "seq_mean_token_mean").item() == pytest.approx((2.0 + 4.0) / 2)
    assert M.aggregate_loss(x, mask, "seq_mean_token_sum").item() == pytest.approx((6.0 + 4.0) / 2)


def test_kl_estimators_hand_computed():
    logp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    log_r = math.log(2.0)
    assert M.kl_estimate(logp, ref, "k1").item() == pytest.approx(log_r)
    assert M.kl_estimate(logp, ref, "k2").item() == pytest.approx(0.5 * log_r**2)
    assert M.kl_estimate(logp, ref, "k3").item() == pytest.approx(0.5 - 1 + log_r)
    assert M.kl_estimate(ref, ref, "k3").item() == 0.0


def test_k3_matches_trl_grpo_formula():
    # TRL's GRPOTrainer: per_token_kl = exp(ref - logp) - (ref - logp) - 1
    logp, ref = torch.randn(4, 5), torch.randn(4, 5)
    trl_kl = torch.exp(ref - logp) - (ref - logp) - 1
    assert torch.allclose(M.kl_estimate(logp, ref, "k3"), trl_kl, rtol=1e-4, atol=1e-6)


def test_k1_k3_are_unbiased_kl_estimates():
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(6), 0)
    q = torch.softmax(torch.randn(6), 0)
    exact = (p * (p / q).log()).sum().item()
    samples = torch.multinomial(p, 200_000, replacement=True)
    logp, logq = p.log()[samples], q.log()[samples]
    assert M.kl_estimate(logp, logq, "k1").mean().item() == pytest.approx(exact, abs=0.02)
    assert M.kl_estimate(logp, logq, "k3").mean().item() == pytest.approx(exact, abs=0.02)


def test_policy_loss_clipping_hand_computed():
    old = torch.zeros(1, 2)
    logp = torch.log(torch.tensor([[1.5, 0.5]]))  # ratios 1.5 and 0.5
    adv = torch.tensor([[1.0, -1.0]])
    mask = torch.ones(1, 2)
    loss, metrics = M.policy_loss(logp, old, adv, mask, clip_eps=0.2)
    # token 1: max(-1.5, -1.2) = -1.2 ; token 2: max(0.5, 0.8) = 0.8
    assert loss.item() == pytest.approx((-1.2 + 0.8) / 2)
    assert metrics["clip_fraction"] == 1.0


def test_dual_clip_caps_negative_advantage_loss():
    old = torch.zeros(1, 1)
    logp = torch.log(torch.tensor([[10.0]]))
    adv = torch.tensor([[-1.0]])
    loss, _ = M.policy_loss(logp, old, adv, torch.ones(1, 1), clip_eps=0.2, dual_clip=3.0)
    assert loss.item() == pytest.approx(3.0)  # min(max(10, 1.2), 3)
    loss, _ = M.policy_loss(logp, old, adv, torch.ones(1, 1), clip_eps=0.2)
    assert loss.item() == pytest.approx(10.0)


def test_policy_loss_matches_trl_grpo_surrogate():
    torch.manual_seed(1)
    logp, old = torch.randn(3, 4), torch.randn(3, 4)
    adv = torch.randn(3, 1)
    mask = (torch.rand(3, 4) > 0.3).float()
    # TRL GRPOTrainer._compute_loss (loss_type="grpo"): per-sequence token mean, then mean.
    coef_1 = torch.exp(logp - old)
    coef_2 = torch.clamp(coef_1, 1 - 0.2, 1 + 0.2)
    per_token = -torch.min(coef_1 * adv, coef_2 * adv)
    trl = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    ours, _ = M.policy_loss(logp, old, adv, mask, 0.2, aggregation="seq_mean_token_mean")
    assert ours.item() == pytest.approx(trl.item(), rel=1e-6)


def test_value_loss_clipping_hand_computed():
    values, old, ret = torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[2.0]])
    loss, m = M.value_loss(values, old, ret, torch.ones(1, 1), clip_eps=0.2)
    # unclipped (1-2)^2 = 1 ; clipped (0.2-2)^2 = 3.24 -> 0.5 * 3.24
    assert loss.item() == pytest.approx(1.62)
    assert m["value_clip_fraction"] == 1.0
    loss, _ = M.value_loss(values, old, ret, torch.ones(1, 1), clip_eps=None)
    assert loss.item() == pytest.approx(0.5)


def test_gae_hand_computed_with_padding():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.1, 0.2, 9.9]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    gamma, lam = 0.9, 0.8
    adv, ret = M.compute_gae(rewards, values, mask, gamma, lam)
    # sequence 0
    d2 = 1.0 - 0.7
    d1 = 0.0 + gamma * 0.7 - 0.6
    d0 = 0.0 + gamma * 0.6 - 0.5
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    assert adv[0].tolist() == pytest.approx([a0, a1, a2])
    # sequence 1: the padded value 9.9 must not leak in
    e1 = 2.0 - 0.2
    e0 = gamma * 0.2 - 0.1
    assert adv[1].tolist() == pytest.approx([e0 + gamma * lam * e1, e1, 0.0])
    assert torch.allclose(ret, (adv + values) * mask)


def test_gae_lambda_one_gamma_one_is_return_minus_value():
    rewards = torch.tensor([[0.0, 0.0, 3.0]])
    values = torch.tensor([[1.0, 2.0, 0.5]])
    adv, ret = M.compute_gae(rewards, values, torch.ones(1, 3), 1.0, 1.0)
    assert ret[0].tolist() == pytest.approx([3.0, 3.0, 3.0])
    assert adv[0].tolist() == pytest.approx([2.0, 1.0, 2.5])


def test_grpo_advantages_match_trl_formula():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    ours = M.grpo_advantages(rewards, group_size=4)
    # TRL: mean/std per group over num_generations, advantages = (r - mean) / (std + 1e-4)
    grouped = rewards.view(-1, 4)
    trl = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-6)).view(
        -1
    )
    assert torch.allclose(ours, trl)
    assert ours[4:].abs().max().item() == 0.0  # equal rewards give no signal
    assert M.grpo_advantages(rewards, 4, scale=False)[:4].tolist() == [0.5, -0.5, -0.5, 0.5]
    with pytest.raises(ValueError):
        M.grpo_advantages(rewards, 3)


def test_rloo_hand_computed():
    adv = M.rloo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), group_size=4)
    assert adv.tolist() == pytest.approx([1 - 1 / 3, -2 / 3, -2 / 3, 1 - 1 / 3])


def test_entropy_uniform_and_peaked():
    logits = torch.zeros(1, 1, 8)
    assert M.entropy_from_logits(logits).item() == pytest.approx(math.log(8))
    peaked = torch.tensor([[[100.0, 0.0, 0.0]]])
    assert M.entropy_from_logits(peaked).item() == pytest.approx(0.0, abs=1e-6)


def test_truncated_importance_weights_and_token_rewards():
    w = M.truncated_importance_weights(
        torch.log(torch.tensor([0.9, 0.1])), torch.log(torch.tensor([0.3, 0.2])), cap=2.0
    )
    assert w.tolist() == pytest.approx([2.0, 0.5])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    kl = torch.full((2, 3), 0.5)
    r = M.token_rewards(torch.tensor([1.0, 2.0]), mask, kl, kl_coef=0.1)
    assert r.flatten().tolist() == pytest.approx([-0.05, 0.95, 0.0, -0.05, -0.05, 1.95])


def test_explained_variance_hand_computed():
    returns = torch.tensor([[1.0, 3.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the padded 9.0 is ignored
    # Var(R) over {1, 3} = 1; a perfect critic explains all of it, a constant none.
    assert M.explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert M.explained_variance(torch.full((1, 3), 2.0), returns, mask) == pytest.approx(0.0)
    # V = {1.5, 2.5}: residuals {-0.5, 0.5}, variance 0.25 -> 1 - 0.25 / 1.
    values = torch.tensor([[1.5, 2.5, 0.0]])
    assert M.explained_variance(values, returns, mask) == pytest.approx(0.75)


def test_whiten_advantages_hand_computed():
    adv = torch.tensor([[1.0, 3.0, 100.0], [5.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # real tokens {1, 3, 5}
    # mean 3, unbiased std sqrt(((1-3)^2 + 0 + (5-3)^2) / 2) = 2
    out = M.whiten_advantages(adv, mask, eps=0.0)
    assert out.flatten().tolist() == pytest.approx([-1.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    # eps keeps a constant batch finite instead of dividing by zero
    assert M.whiten_advantages(torch.ones(1, 2), torch.ones(1, 2)).tolist() == [[0.0, 0.0]]


def test_entropy_bonus_hand_computed():
    entropy = torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    term, metrics = M.entropy_bonus(entropy, mask, coef=0.1)
    # mean over real tokens (1 + 2 + 3) / 3 = 2; the bonus lowers the loss by 0.1 * 2
    assert term.item() == pytest.approx(-0.2)
    assert metrics == {"entropy": pytest.approx(2.0)}
    term.backward()
    assert entropy.grad.flatten().tolist() == pytest.approx([-0.1 / 3, -0.1 / 3, 0, -0.1 / 3, 0, 0])


def test_kl_loss_term_hand_computed():
    logp = torch.log(torch.tensor([[0.5, 0.2], [0.25, 0.9]]))
    ref = torch.log(torch.tensor([[0.25, 0.9], [0.5, 0.1]]))
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # the second tokens are padding
    term, metrics = M.kl_loss_term(logp, ref, mask, coef=0.5, kind="k3")
    # k3 = ref/pi - 1 - log(ref/pi): token (0.5, 0.25) -> 0.5 - 1 + log 2 ; (0.25, 0.5) -> 1 - log 2
    k3 = [0.5 - 1 + math.log(2), 2.0 - 1 - math.log(2)]
    mean = sum(k3) / 2
    assert metrics["kl_in_loss"] == pytest.approx(mean)
    assert term.item() == pytest.approx(0.5 * mean)
    term1, _ = M.kl_loss_term(logp, ref, mask, coef=1.0, kind="k1")
    assert term1.item() == pytest.approx((math.log(2) + math.log(0.5)) / 2)


def test_informative_groups_are_those_with_unequal_rewards():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.25])
    assert M.informative_groups(rewards, 2).tolist() == [False, True, False, True]
    # Zero advantage exactly where a group is uninformative, for GRPO and RLOO alike.
    zero = M.grpo_advantages(rewards, 2).view(-1, 2).abs().sum(-1) == 0
    assert (~M.informative_groups(rewards, 2)).tolist() == zero.tolist()
    assert (M.rloo_advantages(rewards, 2).view(-1, 2).abs().sum(-1) == 0).tolist() == zero.tolist()
