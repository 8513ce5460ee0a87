"""PolicyLearner: holds the policy (and the critic for PPO) and runs the RL update.

Data-parallel over `world_size` learner actors: each takes its shard of every
minibatch, gradients are averaged with torch.distributed (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from actors.batches import TrainBatch
from rayalign import rl_math
from rayalign.models.logprobs import sequence_logprobs


@dataclass
class UpdateOptions:
    """Hyper-parameters of one update (see pipelines/ppo.py for their documentation)."""

    epochs: int = 1
    minibatch_size: int = 16
    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    dual_clip: float | None = None
    value_clip_eps: float | None = 0.2
    value_coef: float = 0.5
    entropy_coef: float = 0.0
    kl_coef_in_loss: float = 0.0
    kl_estimator: str = "k3"
    aggregation: str = "token_mean"
    temperature: float = 1.0
    importance_cap: float | None = None


class PolicyLearner:
    """Create with `ray.remote(PolicyLearner)`; one actor per data-parallel rank."""

    def __init__(
        self,
        model_path: str,
        learning_rate: float,
        critic_path: str | None = None,
        critic_learning_rate: float | None = None,
        rank: int = 0,
        world_size: int = 1,
        master: str | None = None,
        seed: int = 0,
        dtype: str = "float32",
    ) -> None:
        from rayalign.models.loading import load_causal_lm, load_tokenizer

        torch.manual_seed(seed)
        self.rank, self.world_size = rank, world_size
        if world_size > 1:
            import torch.distributed as dist

            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(
                backend, init_method=f"tcp://{master}", rank=rank, world_size=world_size
            )
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = load_tokenizer(model_path)
        self.pad_id = self.tokenizer.pad_token_id
        self.policy = load_causal_lm(model_path, dtype=dtype).to(self.device).train()
        self.optimizer = torch.optim.AdamW(
            self.policy.parameters(), lr=learning_rate, weight_decay=0.0
        )
        self.critic = None
        if critic_path is not None:
            from transformers import AutoModelForTokenClassification

            self.critic = AutoModelForTokenClassification.from_pretrained(
                critic_path, num_labels=1
            ).to(self.device)
            self.critic.config.pad_token_id = self.pad_id
            self.critic_optimizer = torch.optim.AdamW(
                self.critic.parameters(), lr=critic_learning_rate or learning_rate, weight_decay=0.0
            )

    @staticmethod
    def free_address() -> str:
        """host:port for rank 0's process group (called on the rank-0 actor)."""
        import socket

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return f"{os.environ.get('RAY_NODE_IP', '127.0.0.1')}:{port}"

    # -- forward passes -----------------------------------------------------
    @torch.no_grad()
    def logprobs(
        self, prompt_ids: list[list[int]], completion_ids: list[list[int]], temperature: float = 1.0
    ):
        """Current policy's per-token log-probs [B, T] (no grad)."""
        self.policy.eval()
        out = sequence_logprobs(self.policy, prompt_ids, completion_ids, self.pad_id, temperature)
        self.policy.train()
        return out

    def _values(self, prompt_ids, completion_ids) -> torch.Tensor:
        from rayalign.models.logprobs import gather_completions, pad_sequences

        input_ids, attention, cmask = pad_sequences(prompt_ids, completion_ids, self.pad_id)
        per_position = self.critic(
            input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device)
        ).logits
        # The value of the state before token t is read at the position that predicts it.
        return gather_completions(
            per_position[:, :-1, 0].cpu(), cmask, [len(c) for c in completion_ids]
        )

    @torch.no_grad()
    def values(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> torch.Tensor:
        """Critic values [B, T] of the states before each completion token."""
        if self.critic is None:
            raise RuntimeError("this learner has no critic (algorithm without a value model)")
        return self._values(prompt_ids, completion_ids)

    # -- update ---------------------------------------------------------------
    def _shard(self, batch: TrainBatch) -> TrainBatch:
        idx = list(range(self.rank, len(batch.prompt_ids), self.world_size))
        return batch.select(idx)

    def _allreduce_grads(self, model: torch.nn.Module) -> None:
        if self.world_size == 1:
            return
        import torch.distributed as dist

        for p in model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad /= self.world_size

    def update(self, batch: TrainBatch, opts: UpdateOptions) -> dict[str, float]:
        """PPO/GRPO update on this rank's shard: `epochs` passes over minibatches.

        The ratio is taken against the learner's own log-probs before the update
        (pi_old); with `importance_cap`, the loss is reweighted by the truncated ratio
        pi_old / pi_behaviour for samples from a stale (async) policy.
        """
        shard = self._shard(batch)
        old_logp = self.logprobs(shard.prompt_ids, shard.completion_ids, opts.temperature)
        weights = None
        if opts.importance_cap is not None:
            weights = rl_math.truncated_importance_weights(
                old_logp, shard.behaviour_logprobs, opts.importance_cap
            )
        metrics: dict[str, list[float]] = {}
        n = len(shard.prompt_ids)
        per_rank_mb = max(1, opts.minibatch_size // self.world_size)
        generator = torch.Generator().manual_seed(0)
        for _ in range(opts.epochs):
            order = torch.randperm(n, generator=generator).tolist()
            for start in range(0, n, per_rank_mb):
                idx = order[start : start + per_rank_mb]
                mb = shard.select(idx)
                step = self._minibatch_step(
                    mb, old_logp[idx], None if weights is None else weights[idx], opts
                )
                for k, v in step.items():
                    metrics.setdefault(k, []).append(v)
        return {k: sum(v) / len(v) for k, v in metrics.items()}

    def _minibatch_step(
        self, mb: TrainBatch, old_logp, weights, opts: UpdateOptions
    ) -> dict[str, float]:
        from rayalign.models.logprobs import pad_sequences

        input_ids, attention, cmask = pad_sequences(mb.prompt_ids, mb.completion_ids, self.pad_id)
        logits = self.policy(
            input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device)
        ).logits
        logits = logits / opts.temperature
        from rayalign.models.logprobs import gather_completions, token_logprobs

        lengths = [len(c) for c in mb.completion_ids]
        logp = gather_completions(
            token_logprobs(logits, input_ids.to(self.device)).cpu(), cmask, lengths
        )
        T = logp.shape[1]
        mask, adv = mb.mask[:, :T], mb.advantages[:, :T]
        loss, metrics = rl_math.policy_loss(
            logp,
            old_logp[:, :T],
            adv,
            mask,
            opts.clip_eps,
            opts.clip_eps_high,
            opts.dual_clip,
            opts.aggregation,
            None if weights is None else weights[:, :T],
        )
        if opts.entropy_coef:
            entropy = gather_completions(
                rl_math.entropy_from_logits(logits[:, :-1]).cpu(), cmask, lengths
            )
            ent = rl_math.masked_mean(entropy, mask)
            loss = loss - opts.entropy_coef * ent
            metrics["entropy"] = ent.item()
        if opts.kl_coef_in_loss and mb.ref_logprobs is not None:
            kl = rl_math.masked_mean(
                rl_math.kl_estimate(logp, mb.ref_logprobs[:, :T], opts.kl_estimator), mask
            )
            loss = loss + opts.kl_coef_in_loss * kl
            metrics["kl_in_loss"] = kl.item()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._allreduce_grads(self.policy)
        metrics["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), 1.0).item()
        self.optimizer.step()
        metrics["policy_loss"] = loss.item()
        if self.critic is not None and mb.returns is not None:
            values = self._values(mb.prompt_ids, mb.completion_ids)[:, :T]
            vloss, vmetrics = rl_math.value_loss(
                values, mb.old_values[:, :T], mb.returns[:, :T], mask, opts.value_clip_eps
            )
            self.critic_optimizer.zero_grad(set_to_none=True)
            (opts.value_coef * vloss).backward()
            self._allreduce_grads(self.critic)
            torch.nn.utils.clip_grad_norm_(self.critic.parameters(), 1.0)
            self.critic_optimizer.step()
            metrics.update(vmetrics, value_loss=vloss.item())
        return metrics

    # -- weights and checkpoints ----------------------------------------------
    def export_weights(self) -> dict[str, torch.Tensor]:
        from actors.weight_sync import export_weights

        return export_weights(self.policy)

    def save(self, path: str) -> str:
        """Write the policy as a self-contained HF directory (rank 0 only), plus the
        optimizer state and the critic (under `critic/`) for resuming."""
        if self.rank == 0:
            self.policy.save_pretrained(path, safe_serialization=True)
            self.tokenizer.save_pretrained(path)
            state = {"policy": self.optimizer.state_dict()}
            if self.critic is not None:
                self.critic.save_pretrained(os.path.join(path, "critic"), safe_serialization=True)
                state["critic"] = self.critic_optimizer.state_dict()
            torch.save(state, os.path.join(path, "optimizer.pt"))
        return path

    def load_optimizer(self, path: str) -> None:
        """Restore optimizer state written by `save` (every rank holds the same state)."""
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.optimizer.load_state_dict(state["policy"])
        if self.critic is not None and "critic" in state:
            self.critic_optimizer.load_state_dict(state["critic"])
