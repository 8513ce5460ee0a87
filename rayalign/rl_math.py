"""Pure RL math for PPO, GRPO and RLOO: losses, advantages, KL estimators.

Every function takes tensors and explicit scalars and never reads a config or
touches Ray. Shapes: B = sequences, T = completion tokens (right-padded), and
`mask` [B, T] is 1.0 on real completion tokens, 0.0 on padding.
"""

from __future__ import annotations

from typing import Literal

import torch

Aggregation = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"]
KLEstimator = Literal["k1", "k2", "k3"]


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over positions where `mask` is 1 (all of them, or along `dim`)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def aggregate_loss(
    per_token: torch.Tensor, mask: torch.Tensor, mode: Aggregation = "token_mean"
) -> torch.Tensor:
    """Reduce a [B, T] per-token loss to a scalar.

    - token_mean: every token weighs the same (DAPO, verl's default).
    - seq_mean_token_mean: mean per sequence, then over sequences (original GRPO).
    - seq_mean_token_sum: sum per sequence, then mean over sequences (Dr. GRPO-style, no length bias).
    """
    if mode == "token_mean":
        return masked_mean(per_token, mask)
    if mode == "seq_mean_token_mean":
        return masked_mean(per_token, mask, dim=-1).mean()
    if mode == "seq_mean_token_sum":
        return (per_token * mask).sum(-1).mean()
    raise ValueError(f"unknown aggregation {mode!r}")


def kl_estimate(
    logp: torch.Tensor, ref_logp: torch.Tensor, kind: KLEstimator = "k3"
) -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from samples of pi (Schulman's k1, k2, k3).

    Args:
        logp: [B, T] log pi(token) of the sampled tokens.
        ref_logp: [B, T] log ref(token) of the same tokens.

    Returns:
        [B, T]: k1 = log r, k2 = (log r)^2 / 2, k3 = (r' - 1) - log r' with r = pi/ref, r' = ref/pi.
    """
    log_ratio = logp - ref_logp
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.exp(-log_ratio) - 1.0 + log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}")


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
    aggregation: Aggregation = "token_mean",
    importance_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate loss, optionally dual-clipped.

    Args:
        logp: [B, T] current policy log-probs of the sampled tokens (with grad).
        old_logp: [B, T] log-probs of the policy the batch is optimised against.
        advantages: [B, T] (or [B, 1], broadcast) advantage estimates.
        mask: [B, T].
        clip_eps / clip_eps_high: the ratio is clipped to [1 - clip_eps, 1 + clip_eps_high]
            (clip_eps_high defaults to clip_eps).
        dual_clip: c > 1; for negative advantages the loss is capped at -c * A (Ye et al. 2020).
        importance_weights: [B, T] truncated weights correcting for stale behaviour samples
            (async rollouts); multiplies the per-token loss.

    Returns:
        (loss, metrics) with clip_fraction, approx_kl (k3 of old vs new) and ratio_mean.
    """
    high = clip_eps if clip_eps_high is None else clip_eps_high
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + high)
    per_token = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        capped = torch.minimum(per_token, -advantages * dual_clip)
        per_token = torch.where(advantages < 0, capped, per_token)
    if importance_weights is not None:
        per_token = per_token * importance_weights
    loss = aggregate_loss(per_token, mask, aggregation)
    with torch.no_grad():
        metrics = {
            "clip_fraction": masked_mean((clipped > unclipped).float(), mask).item(),
            "approx_kl": masked_mean(torch.exp(-log_ratio) - 1.0 + log_ratio, mask).item(),
            "ratio_mean": masked_mean(ratio, mask).item(),
        }
    return loss, metrics


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float | None = 0.2,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss 0.5 * max((V - R)^2, (V_clip - R)^2), V_clip = old + clip(V - old, +-eps).

    All tensors are [B, T]. `clip_eps=None` gives the plain squared error.
    """
    unclipped = (values - returns) ** 2
    if clip_eps is None:
        per_token = unclipped
        frac = torch.zeros(())
    else:
        v_clip = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
        clipped = (v_clip - returns) ** 2
        per_token = torch.maximum(unclipped, clipped)
        frac = masked_mean((clipped > unclipped).float(), mask)
    loss = 0.5 * masked_mean(per_token, mask)
    return loss, {
        "value_clip_fraction": frac.item(),
        "value_mse": masked_mean(unclipped, mask).item(),
    }


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over masked tokens: 1 is a perfect critic, 0 a constant one."""
    m = mask.bool()
    r, v = returns[m].double(), values[m].double()
    var = r.var(unbiased=False)
    if r.numel() < 2 or var == 0:
        return float("nan")
    return float(1.0 - (r - v).var(unbiased=False) / var)


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded completions.

    Args:
        rewards: [B, T] per-token rewards (the final reward on the last token, KL
            penalties spread over tokens).
        values: [B, T] value estimates V(s_t) before emitting token t.
        mask: [B, T]; the value after a sequence's last real token is 0.

    Returns:
        (advantages, returns), each [B, T], zero on padding; returns = advantages + values.
    """
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)
    last = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        next_value = values[:, t + 1] * mask[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last * (mask[:, t + 1] if t + 1 < T else 0.0)
        advantages[:, t] = last
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def whiten_advantages(
    advantages: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """Advantages shifted to mean 0 and scaled to std 1 over real tokens (PPO's whitening).

    Args:
        advantages: [B, T] per-token advantages (e.g. from `compute_gae`).
        mask: [B, T].

    Returns:
        [B, T]: (A - mean(A)) / (std(A) + eps) * mask, mean and (unbiased) std taken over
        the masked tokens only; zero on padding.
    """
    real = advantages[mask.bool()]
    return (advantages - masked_mean(advantages, mask)) / (real.std() + eps) * mask


def grpo_advantages(
    rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """Group-normalised advantages (GRPO): (r - mean_group) / (std_group + eps).

    Args:
        rewards: [B] with B = prompts x group_size, each prompt's samples contiguous.
        scale: divide by the group's standard deviation (False gives Dr. GRPO's centring only).

    Returns:
        [B] one advantage per sequence.
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards is not a multiple of group_size {group_size}")
    grouped = rewards.view(-1, group_size)
    centred = grouped - grouped.mean(-1, keepdim=True)
    if scale:
        centred = centred / (grouped.std(-1, keepdim=True) + eps)
    return centred.reshape(-1)


def informative_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[B] rewards -> [B / group_size] bool: True for groups whose rewards are not all equal.

    A group with equal rewards gets zero advantage from GRPO and RLOO alike; DAPO's dynamic
    sampling leaves such groups out of the update.
    """
    grouped = rewards.view(-1, group_size)
    return (grouped != grouped[:, :1]).any(-1)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out: r_i - mean of the other samples of the same prompt. [B] -> [B]."""
    if group_size < 2:
        raise ValueError("RLOO needs group_size >= 2")
    grouped = rewards.view(-1, group_size)
    baseline = (grouped.sum(-1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - baseline).reshape(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution at each position. [B, T, V] -> [B, T]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def truncated_importance_weights(
    old_logp: torch.Tensor, behaviour_logp: torch.Tensor, cap: float = 2.0
) -> torch.Tensor:
    """min(pi_old / pi_behaviour, cap) per token: corrects for one-step-stale async rollouts."""
    return torch.exp(old_logp - behaviour_logp).clamp(max=cap)


def token_rewards(
    scores: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor | None = None, kl_coef: float = 0.0
) -> torch.Tensor:
    """Per-token rewards for PPO: -kl_coef * KL on every token, the sequence score on the last.

    Args:
        scores: [B] one scalar reward per completion.
        mask: [B, T].
        kl: [B, T] per-token KL estimate (in-reward KL), or None.

    Returns:
        [B, T] rewards, zero on padding.
    """
    rewards = torch.zeros_like(mask, dtype=scores.dtype)
    if kl is not None and kl_coef:
        rewards = rewards - kl_coef * kl
    lengths = mask.sum(-1).long()
    last = (lengths - 1).clamp(min=0)
    rewards[torch.arange(len(scores)), last] += scores * (lengths > 0)
    return rewards * mask


def entropy_bonus(
    entropy: torch.Tensor, mask: torch.Tensor, coef: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """The entropy term added to the policy loss: -coef * mean entropy over real tokens.

    Args:
        entropy: [B, T] entropy of the policy's next-token distribution at each completion
            token (`entropy_from_logits`).
        mask: [B, T].
        coef: bonus weight (>= 0); a larger entropy lowers the loss.

    Returns:
        (term, {"entropy": mean entropy}); term is a scalar that keeps the graph.
    """
    mean = masked_mean(entropy, mask)
    return -coef * mean, {"entropy": mean.item()}


def kl_loss_term(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    coef: float,
    kind: KLEstimator = "k3",
) -> tuple[torch.Tensor, dict[str, float]]:
    """The in-loss KL penalty (GRPO style): coef * mean KL(pi || ref) over real tokens.

    Args:
        logp: [B, T] current policy log-probs of the sampled tokens (with grad).
        ref_logp: [B, T] reference log-probs of the same tokens.
        mask: [B, T].
        coef: penalty weight.
        kind: the per-token estimator (`kl_estimate`).

    Returns:
        (term, {"kl_in_loss": mean KL}); term is a scalar that keeps the graph.
    """
    mean = masked_mean(kl_estimate(logp, ref_logp, kind), mask)
    return coef * mean, {"kl_in_loss": mean.item()}
