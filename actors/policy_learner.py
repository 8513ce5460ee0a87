"""PolicyLearner: holds the policy (and the critic for PPO) and runs the RL update.

Data-parallel over `world_size` learner actors (`actors.data_parallel`): each trains on
its shard of every minibatch under torch DDP (gloo on CPU, NCCL on GPU), weighted so that
every optimizer step is the one a single learner would take on the whole minibatch.
"""

from __future__ import annotations

import logging
import os

import torch

from actors import data_parallel
from actors.batches import TrainBatch
from actors.weight_sync import WeightSender, export_weights
from rayalign import rl_math
from rayalign.models.loading import (
    checkpoint_activations,
    load_causal_lm,
    load_tokenizer,
    load_value_model,
)
from rayalign.models.logprobs import sequence_logprobs
from rayalign.models.lora import is_peft, save_merged, with_adapters
from rayalign.rl_config import RLConfig
from rayalign.storage import local_copy, local_folder_for

logger = logging.getLogger(__name__)


class LogprobMismatchError(RuntimeError):
    """vLLM's sampling log-probs and the learner's disagree: the weight sync is broken."""


class PolicyLearner(WeightSender):
    """Create with `ray.remote(PolicyLearner)`; one actor per data-parallel rank.

    Args:
        model_path: checkpoint of the initial policy.
        rl: the run's validated `rl` section: learning rates and every update setting.
        critic_path: checkpoint the critic starts from (PPO), or None.
        rank / world_size: this actor's data-parallel rank among `world_size` learners.
            With more than one, call `init_process_group` on every rank (the address from
            rank 0's `rendezvous_address`) before the first update.
        seed: torch seed, set before the models load.
        dtype: weights dtype of the policy and the critic.
    """

    def __init__(
        self,
        model_path: str,
        rl: RLConfig,
        critic_path: str | None = None,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        dtype: str = "float32",
    ) -> None:
        torch.manual_seed(seed)
        self.rl = rl
        self.rank, self.world_size = rank, world_size
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = load_tokenizer(model_path)
        self.pad_id = self.tokenizer.pad_token_id
        # LoRA: adapters on the frozen policy (a LoRA checkpoint resumes its own).
        self.policy = (
            with_adapters(model_path, rl.lora, dtype)
            if rl.lora
            else load_causal_lm(model_path, dtype=dtype)
        )
        self.policy = self.policy.to(self.device).train()
        self.trainable_params = sum(p.numel() for p in self.policy.parameters() if p.requires_grad)
        # What the rollout engines get after each update: the adapters alone, or the
        # merged weights (`rl.lora_sync`).
        self.sync_adapters = rl.lora is not None and rl.lora_sync == "adapters"
        if rl.lora:
            logger.info(
                f"[learner] LoRA r={rl.lora.r}: {self.trainable_params:,} parameters train; "
                f"the engines get {'the adapters' if self.sync_adapters else 'merged weights'}"
            )
        if rl.gradient_checkpointing:
            checkpoint_activations(self.policy)
        self.optimizer = torch.optim.AdamW(
            [p for p in self.policy.parameters() if p.requires_grad],
            lr=rl.learning_rate,
            weight_decay=0.0,
        )
        self.critic = None
        if critic_path is not None:
            critic = load_value_model(critic_path, pad_token_id=self.pad_id, dtype=dtype)
            self.critic = critic.to(self.device)
            if rl.gradient_checkpointing:
                checkpoint_activations(self.critic)
            self.critic_optimizer = torch.optim.AdamW(
                self.critic.parameters(), lr=rl.critic_learning_rate, weight_decay=0.0
            )
        # What the training forward goes through: DDP wrappers once the ranks have met.
        self.train_policy, self.train_critic = self.policy, self.critic

    # -- data-parallel rendezvous ---------------------------------------------
    def rendezvous_address(self) -> str:
        """host:port, free on this actor's node, for the process group (asked of rank 0)."""
        return data_parallel.rendezvous_address()

    def init_process_group(self, master: str) -> None:
        """Join the learners' process group at rank 0's `master` address (all ranks at
        once) and train the policy and the critic under DDP from then on."""
        data_parallel.join_group(master, self.rank, self.world_size)
        self.train_policy = data_parallel.wrap(self.policy)
        if self.critic is not None:
            self.train_critic = data_parallel.wrap(self.critic)

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

    def _values(self, prompt_ids, completion_ids, critic=None) -> torch.Tensor:
        from rayalign.models.logprobs import gather_completions, pad_sequences

        input_ids, attention, cmask = pad_sequences(prompt_ids, completion_ids, self.pad_id)
        per_position = (critic or self.critic)(
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

    def update(self, batch: TrainBatch) -> dict[str, float]:
        """PPO/GRPO update on this rank's shard: `rl.epochs` passes over minibatches.

        pi_old, the policy the ratio is taken against, is the sampling policy. With
        `rl.old_logprobs` "sampling" (the default for one synchronous epoch) vLLM's
        log-probs stand in for it and no extra forward pass runs; their gap to the
        learner's own log-probs (`logprob_mismatch`) is read off the first minibatch's
        forward, before any weight moves. With "recompute" (async, several epochs) one
        no-grad pass gives pi_old, and in async mode the loss is reweighted by the
        truncated ratio pi_old / pi_behaviour (`rl.importance_cap`) for samples from a
        stale policy.

        Raises:
            LogprobMismatchError: vLLM's and the learner's log-probs of the same freshly
                sampled tokens differ by more than `rl.max_logprob_mismatch` on average
                (checked on every rank together, before the first optimizer step).
        """
        rl = self.rl
        shard = self._shard(batch)
        # Fewer rows than ranks: this one steps along on a row weighed zero.
        idle = not shard.prompt_ids
        shard = batch.select([0]) if idle else shard
        fresh = shard.fresh_rows()
        weights = None
        if self.old_logprobs_mode() == "sampling":
            old_logp, gap = shard.behaviour_logprobs, None
        else:
            old_logp = self.logprobs(shard.prompt_ids, shard.completion_ids, rl.temperature)
            gap = self._mismatch(old_logp, shard, fresh * (not idle))
            if rl.async_mode:
                weights = rl_math.truncated_importance_weights(
                    old_logp, shard.behaviour_logprobs, rl.importance_cap
                )
        metrics: dict[str, list[float]] = {}
        # The same number of optimizer steps on every rank, however uneven the shards; a
        # rank without rows in a minibatch steps on a borrowed one weighed zero.
        count = data_parallel.minibatch_count(len(batch.prompt_ids), rl.minibatch_size)
        generator = torch.Generator().manual_seed(0)
        for _ in range(rl.epochs):
            order = torch.randperm(len(shard.prompt_ids), generator=generator).tolist()
            for idx in data_parallel.minibatches(order, count):
                rows = idx or [0]
                step = self._minibatch_step(
                    shard.select(rows),
                    old_logp[rows],
                    None if weights is None else weights[rows],
                    gap,
                    fresh[rows],
                    empty=idle or not idx,
                )
                gap = step.pop("logprob_mismatch")
                for k, v in step.items():
                    metrics.setdefault(k, []).append(v)
        out = {k: sum(v) / len(v) for k, v in metrics.items()}
        out["logprob_mismatch"] = float("nan") if gap is None else gap
        return out

    def old_logprobs_mode(self) -> str:
        """ "sampling" or "recompute": where pi_old comes from (`rl.old_logprobs`)."""
        rl = self.rl
        if rl.old_logprobs != "auto":
            return rl.old_logprobs
        return "sampling" if rl.epochs == 1 and not rl.async_mode else "recompute"

    def _mismatch(self, learner_logp: torch.Tensor, mb: TrainBatch, fresh: torch.Tensor) -> float:
        """Mean |learner - vLLM| log-prob over the fresh rows' tokens of every rank (NaN
        when none is fresh); raises LogprobMismatchError past the configured bound."""
        return self._check_gap(self._gap_totals(learner_logp, mb, fresh))

    @staticmethod
    def _gap_totals(learner_logp: torch.Tensor, mb: TrainBatch, fresh: torch.Tensor):
        """[sum of |learner - vLLM| log-prob, token count] over `mb`'s fresh rows."""
        T = learner_logp.shape[1]
        mask = mb.mask[:, :T] * fresh[:, None]
        diff = (learner_logp.detach() - mb.behaviour_logprobs[:, :T]).abs() * mask
        return torch.stack([diff.sum(), mask.sum()]).double()

    def _check_gap(self, totals: torch.Tensor) -> float:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(totals, op=dist.ReduceOp.SUM)
        if totals[1] == 0:
            return float("nan")
        gap = (totals[0] / totals[1]).item()
        if gap > self.rl.max_logprob_mismatch:
            raise LogprobMismatchError(
                f"vLLM and learner log-probs differ by {gap:.4f} on average on the same tokens "
                f"(bound rl.max_logprob_mismatch={self.rl.max_logprob_mismatch}); the weight sync "
                "is broken or the engines disagree numerically"
            )
        return gap

    def _policy_forward(self, mb: TrainBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs [B, T] of the minibatch's completions (with grad) and, when the entropy
        bonus is on, the policy's entropy [B, T] at each completion token."""
        from rayalign.models.logprobs import gather_completions, pad_sequences, token_logprobs

        input_ids, attention, cmask = pad_sequences(mb.prompt_ids, mb.completion_ids, self.pad_id)
        input_ids = input_ids.to(self.device)
        logits = self.train_policy(
            input_ids=input_ids, attention_mask=attention.to(self.device)
        ).logits
        t = self.rl.temperature
        lengths = [len(c) for c in mb.completion_ids]
        logp = gather_completions(token_logprobs(logits, input_ids, t).cpu(), cmask, lengths)
        entropy = None
        if self.rl.entropy_coef:
            per_position = rl_math.entropy_from_logits(logits[:, :-1] / t).cpu()
            entropy = gather_completions(per_position, cmask, lengths)
        return logp, entropy

    def _policy_loss(
        self,
        mb: TrainBatch,
        old_logp: torch.Tensor,
        weights: torch.Tensor | None,
        shares: tuple[float, float],
    ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """Clipped surrogate + entropy bonus + in-loss KL (`rl.kl_in: loss`) of one
        micro-batch, scaled by its (sequence, token) shares of the minibatch so that the
        micro-batches' gradients add up to the minibatch's. Returns the scaled loss, the
        micro-batch's unscaled metrics and its log-probs."""
        rl = self.rl
        seq_share, token_share = shares
        logp, entropy = self._policy_forward(mb)
        T = logp.shape[1]
        mask = mb.mask[:, :T]
        loss, metrics = rl_math.policy_loss(
            logp,
            old_logp[:, :T],
            mb.advantages[:, :T],
            mask,
            rl.clip_eps,
            rl.clip_eps_high,
            rl.dual_clip,
            rl.aggregation,
            None if weights is None else weights[:, :T],
        )
        loss = loss * (token_share if rl.aggregation == "token_mean" else seq_share)
        if entropy is not None:
            bonus, bonus_metrics = rl_math.entropy_bonus(entropy, mask, rl.entropy_coef)
            loss = loss + bonus * token_share
            metrics.update(bonus_metrics)
        if rl.kl_in == "loss" and rl.kl_coef and mb.ref_logprobs is not None:
            kl, kl_metrics = rl_math.kl_loss_term(
                logp, mb.ref_logprobs[:, :T], mask, rl.kl_coef, rl.kl_estimator
            )
            loss = loss + kl * token_share
            metrics.update(kl_metrics)
        return loss, metrics, logp

    def _micro_batches(self, mb: TrainBatch, counts: tuple[float, float], empty: bool = False):
        """(rows, (sequence share, token share), last) of each `rl.micro_batch_size` slice
        of `mb`. The shares are of the minibatch over every rank (`counts`: its sequences
        and tokens there), times the world size that DDP's average divides by; zero for a
        rank's `empty` stand-in row."""
        n = len(mb.prompt_ids)
        size = self.rl.micro_batch_size or n
        seqs, tokens = counts
        scale = 0.0 if empty else float(self.world_size)
        for start in range(0, n, size):
            rows = list(range(start, min(n, start + size)))
            shares = (scale * len(rows) / seqs, scale * float(mb.mask[rows].sum()) / tokens)
            yield rows, shares, start + size >= n

    def _minibatch_step(
        self,
        mb: TrainBatch,
        old_logp: torch.Tensor,
        weights: torch.Tensor | None,
        gap: float | None,
        fresh: torch.Tensor,
        empty: bool = False,
    ) -> dict[str, float]:
        """One optimizer step on this rank's rows `mb` of a minibatch, its gradient
        accumulated over micro-batches and averaged over the ranks. With `gap` None (pi_old
        from sampling, first minibatch) the forward's log-probs are checked against vLLM's
        before the step; the gap is returned as logprob_mismatch. `empty`: this rank has no
        row in the minibatch and `mb` is a stand-in weighed zero."""
        self.optimizer.zero_grad(set_to_none=True)
        metrics: dict[str, float] = {"policy_loss": 0.0}
        check = gap is None
        totals = torch.zeros(2, dtype=torch.float64)
        counts = data_parallel.global_counts(mb.mask[:0] if empty else mb.mask, self.world_size)
        fresh = fresh * (not empty)
        for rows, shares, last in self._micro_batches(mb, counts, empty):
            micro = mb.select(rows)
            with data_parallel.grad_sync(self.train_policy, last):
                loss, micro_metrics, logp = self._policy_loss(
                    micro, old_logp[rows], None if weights is None else weights[rows], shares
                )
                loss.backward()
            metrics["policy_loss"] += loss.item()
            for k, v in micro_metrics.items():
                metrics[k] = metrics.get(k, 0.0) + v * shares[1]
            if check:
                totals += self._gap_totals(logp, micro, fresh[rows])
        if check:
            gap = self._check_gap(totals)
        metrics["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), 1.0).item()
        self.optimizer.step()
        if self.critic is not None and mb.returns is not None:
            metrics.update(self._critic_step(mb, counts, empty))
        metrics["logprob_mismatch"] = gap
        return metrics

    def _critic_step(
        self, mb: TrainBatch, counts: tuple[float, float], empty: bool = False
    ) -> dict[str, float]:
        """One critic optimizer step on `mb`, accumulated over micro-batches and averaged
        over the ranks as the policy's step is."""
        self.critic_optimizer.zero_grad(set_to_none=True)
        metrics: dict[str, float] = {"value_loss": 0.0}
        for rows, (_, token_share), last in self._micro_batches(mb, counts, empty):
            micro = mb.select(rows)
            with data_parallel.grad_sync(self.train_critic, last):
                values = self._values(micro.prompt_ids, micro.completion_ids, self.train_critic)
                T = values.shape[1]
                vloss, micro_metrics = rl_math.value_loss(
                    values,
                    micro.old_values[:, :T],
                    micro.returns[:, :T],
                    micro.mask[:, :T],
                    self.rl.value_clip_eps,
                )
                (self.rl.value_coef * vloss * token_share).backward()
            metrics["value_loss"] += vloss.item() * token_share
            for k, v in micro_metrics.items():
                metrics[k] = metrics.get(k, 0.0) + v * token_share
        torch.nn.utils.clip_grad_norm_(self.critic.parameters(), 1.0)
        self.critic_optimizer.step()
        return metrics

    # -- weights and checkpoints ----------------------------------------------
    def weights(self) -> dict[str, torch.Tensor]:
        return export_weights(self.policy, adapters_only=self.sync_adapters)

    def export_weights(self) -> dict[str, torch.Tensor]:
        """The policy's weights as a return value (to the object store)."""
        return self.weights()

    def save(self, path: str) -> str:
        """Write the policy as a self-contained HF directory at `path` (a local folder or
        a storage URI; rank 0 only), plus the optimizer state and the critic (under
        `critic/`) for resuming."""
        if self.rank == 0:
            with local_folder_for(path) as folder:
                self._save_to(folder)
        return path

    def _save_to(self, path: str) -> None:
        if is_peft(self.policy):  # merged weights to serve, adapters to resume
            save_merged(self.policy, path)
        else:
            self.policy.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        state = {"policy": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state()}
        if self.critic is not None:
            self.critic.save_pretrained(os.path.join(path, "critic"), safe_serialization=True)
            state["critic"] = self.critic_optimizer.state_dict()
        torch.save(state, os.path.join(path, "optimizer.pt"))

    def load_optimizer(self, path: str) -> None:
        """Restore optimizer state written by `save` (every rank holds the same state)."""
        state = torch.load(local_copy(path), map_location="cpu", weights_only=False)
        self.optimizer.load_state_dict(state["policy"])
        if "torch_rng" in state:  # the learner's random stream continues where it was
            torch.set_rng_state(state["torch_rng"])
        if self.critic is not None and "critic" in state:
            self.critic_optimizer.load_state_dict(state["critic"])
