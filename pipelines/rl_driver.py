"""The RL step loop: PPO, GRPO and RLOO over an injected actor group.

One step reads like the algorithm:

    generate -> score -> reference log-probs -> advantages -> update -> sync weights

No pass is wasted: the reference runs only when there is a KL term, pi_old is the
sampling policy's log-probs (the learner checks them against its own on the update's
first forward pass), and with `rl.drop_uniform_groups` the groups with zero advantage
leave the batch before the reference and the update see it.

The driver moves data between actors (`RLActors`) and does only light tensor math
(`rayalign.rl_math`); building the actors, checkpoints, metrics and autoscaling live in
the sibling `rl_*` modules.
"""

from __future__ import annotations

import hashlib
import random
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import ray
import torch

from actors.batches import PromptRequest, Sample, SamplingOptions, ScoredBatch, TrainBatch
from pipelines.evaluate import PromptRows, read_prompt_rows
from pipelines.rl_actors import RLActors
from pipelines.rl_autoscale import wanted_pool_size
from pipelines.rl_checkpoint import RunState, register_final, save_checkpoint
from pipelines.rl_metrics import MetricsLog
from rayalign import rl_math
from rayalign.config import EVAL_SPLIT
from rayalign.registry import RegistryEntry
from rayalign.rewards import exact_match_reward
from rayalign.rl_config import PPOStageConfig


@dataclass
class Rollouts:
    """One step's samples, flattened (prompt-major, `group_size` per prompt)."""

    samples: list[Sample]
    prompts: list[list[dict]]
    columns: list[dict[str, Any]]  # each sample's prompt row without the prompt

    @property
    def mask(self) -> torch.Tensor:
        """[B, T] 1.0 on completion tokens, T the longest completion."""
        return self.padded([[1.0] * len(s.completion_ids) for s in self.samples])

    def padded(self, rows: list[list[float]]) -> torch.Tensor:
        """Per-token rows right-padded with 0.0 to [B, T]."""
        width = max(len(s.completion_ids) for s in self.samples)
        return torch.tensor([r + [0.0] * (width - len(r)) for r in rows])

    @property
    def token_ids(self) -> tuple[list[list[int]], list[list[int]]]:
        return [s.prompt_ids for s in self.samples], [s.completion_ids for s in self.samples]

    def select(self, idx: list[int]) -> Rollouts:
        return Rollouts(
            [self.samples[i] for i in idx],
            [self.prompts[i] for i in idx],
            [self.columns[i] for i in idx],
        )


@dataclass
class Advantages:
    """What the advantage phase hands the update: all [B, T], zero on padding.

    `returns` and `values` (the critic's at sampling) are PPO's only.
    """

    advantages: torch.Tensor
    returns: torch.Tensor | None = None
    values: torch.Tensor | None = None


class RLDriver:
    """Drives one RL run's steps over `actors`, from `state` (a fresh or resumed run)."""

    def __init__(
        self, config: PPOStageConfig, actors: RLActors, state: RunState, metrics: MetricsLog
    ) -> None:
        self.config = config
        self.rl = config.rl
        self.actors = actors
        self.state = state
        self.metrics = metrics
        self.data = read_prompt_rows(config.data.prompts)
        self.version = state.step
        actors.pool.weight_version = self.version
        self.entry: RegistryEntry | None = None

    # -- the phases of a step -------------------------------------------------
    def requests(self, step: int) -> list[PromptRequest]:
        """Step `step`'s prompts: epochs of a seeded shuffle, `prompts_per_step` at a time,
        each with its own sampling seed.

        Both are functions of (run.seed, step) alone, so a run resumed at step k draws the
        same prompts and, with the same weights, the same samples as one never stopped,
        on any number of workers.
        """
        order = list(range(len(self.data.conversations)))
        per_step = self.rl.prompts_per_step
        epoch, offset = divmod(step * per_step, len(order))
        random.Random(self.config.run.seed + epoch).shuffle(order)
        idx = [order[(offset + i) % len(order)] for i in range(per_step)]
        seed = self.config.run.seed
        return [_request(self.data, j, i, sample_seed(seed, step, i)) for i, j in enumerate(idx)]

    def generate(
        self, requests: list[PromptRequest], n: int | None = None, seed: int | None = None
    ) -> Rollouts:
        sampling = SamplingOptions(
            n=n or self.rl.group_size,
            temperature=self.rl.temperature,
            max_tokens=self.rl.max_new_tokens,
            seed=seed,
        )
        grouped = self.actors.pool.generate(requests, sampling)
        samples = [s for group in grouped for s in group]
        prompts = [requests[s.index].messages for s in samples]
        columns = [requests[s.index].columns for s in samples]
        return Rollouts(samples, prompts, columns)

    def score(self, ro: Rollouts, conversational: bool | None = None) -> ScoredBatch:
        """Rewards [B] of every sample, the batch split round-robin among the scorers
        (`conversational`: the prompts file's form, default the training prompts')."""
        if conversational is None:
            conversational = self.data.conversational
        scorers = self.actors.scorers
        shards = [list(range(i, len(ro.samples), len(scorers))) for i in range(len(scorers))]
        outs: list[ScoredBatch] = ray.get(
            [
                sc.score.remote(
                    [ro.prompts[j] for j in idx],
                    [ro.samples[j].text for j in idx],
                    [ro.samples[j].completion_ids for j in idx],
                    [ro.columns[j] for j in idx],
                    conversational,
                )
                for sc, idx in zip(scorers, shards, strict=True)
            ]
        )
        scored = ScoredBatch(rewards=torch.zeros(len(ro.samples)))
        for idx, out in zip(shards, outs, strict=True):
            scored.rewards[idx] = out.rewards
            for k, v in out.components.items():
                scored.components.setdefault(k, torch.zeros(len(ro.samples)))[idx] = v
        return scored

    def reference_logprobs(self, ro: Rollouts, width: int) -> torch.Tensor | None:
        """The frozen reference's log-probs [B, width] of the sampled tokens; None (no
        pass) when the KL coefficient is 0."""
        if not self.rl.kl_coef:
            return None
        ref = self.actors.reference.reference_logprobs.remote(*ro.token_ids, self.rl.temperature)
        return ray.get(ref)[:, :width]

    def drop_uniform_groups(
        self, ro: Rollouts, scores: torch.Tensor
    ) -> tuple[Rollouts, torch.Tensor, dict[str, float]]:
        """DAPO's dynamic sampling: the groups whose rewards are all equal (their advantages
        are all zero) leave the batch; `dropped_groups` counts them."""
        if not self.rl.drop_uniform_groups:
            return ro, scores, {}
        kept = rl_math.informative_groups(scores, self.rl.group_size)
        groups = len(scores) // self.rl.group_size
        metrics = {"dropped_groups": float(groups - int(kept.sum()))}
        if bool(kept.all()):
            return ro, scores, metrics
        rows = kept.repeat_interleave(self.rl.group_size).nonzero().flatten().tolist()
        return ro.select(rows), scores[rows], metrics

    def advantages(
        self,
        ro: Rollouts,
        scores: torch.Tensor,
        mask: torch.Tensor,
        behaviour: torch.Tensor,
        ref_lp: torch.Tensor | None,
    ) -> tuple[Advantages, dict[str, float]]:
        """PPO: GAE on the critic's values and KL-penalised token rewards, whitened.
        GRPO / RLOO: one group-relative advantage per sequence, on every token."""
        kl = None
        metrics = {"kl": float("nan")}
        if ref_lp is not None:
            kl = rl_math.kl_estimate(behaviour, ref_lp, self.rl.kl_estimator) * mask
            metrics["kl"] = rl_math.masked_mean(kl, mask).item()
        if self.rl.algorithm == "ppo":
            kl_in_reward = kl if self.rl.kl_in == "reward" else None
            token_r = rl_math.token_rewards(scores, mask, kl_in_reward, self.rl.kl_coef)
            values = ray.get(self.actors.learners[0].values.remote(*ro.token_ids))
            adv, returns = rl_math.compute_gae(token_r, values, mask, self.rl.gamma, self.rl.lam)
            # The critic's fit on rollouts it has not trained on yet (verl's vf_explained_var).
            metrics["value_explained_var"] = rl_math.explained_variance(values, returns, mask)
            return Advantages(rl_math.whiten_advantages(adv, mask), returns, values), metrics
        if self.rl.algorithm == "grpo":
            seq = rl_math.grpo_advantages(scores, self.rl.group_size, scale=self.rl.grpo_scale_std)
        else:
            seq = rl_math.rloo_advantages(scores, self.rl.group_size)
        return Advantages(seq[:, None] * mask), metrics

    def update(self, batch: TrainBatch) -> dict[str, float]:
        """Every learner updates on its shard; their metrics are averaged."""
        per_rank = ray.get([lr.update.remote(batch) for lr in self.actors.learners])
        return {k: sum(m[k] for m in per_rank) / len(per_rank) for k in per_rank[0]}

    def sync_weights(self) -> None:
        self.version += 1
        # Colocated engines load from their own learner in-process; other workers read
        # rank 0's export from the object store (exported only if one needs it).
        self.actors.pool.load_weights(self.actors.learners[0].export_weights.remote, self.version)

    def train_step(self, ro: Rollouts, timings: dict[str, float]) -> dict[str, float]:
        """score -> reference log-probs -> advantages -> update (the caller syncs weights).
        Returns the step's metrics, with `updated` 0.0 when no group was left to learn from."""
        scored = _timed(timings, "score", self.score, ro)
        metrics = {f"reward/{k}": v.nanmean().item() for k, v in scored.components.items()}
        metrics.update(
            reward=scored.rewards.mean().item(),
            samples=float(len(ro.samples)),
            tokens=float(sum(len(s.completion_ids) for s in ro.samples)),
        )
        ro, scores, dropped = self.drop_uniform_groups(ro, scored.rewards)
        metrics.update(dropped)
        if not ro.samples:
            nan = float("nan")
            return {**metrics, "updated": 0.0, "kl": nan, "logprob_mismatch": nan}
        mask = ro.mask
        behaviour = ro.padded([s.logprobs for s in ro.samples])
        ref_lp = _timed(timings, "reference", self.reference_logprobs, ro, mask.shape[1])
        adv, adv_metrics = self.advantages(ro, scores, mask, behaviour, ref_lp)
        prompt_ids, completion_ids = ro.token_ids
        batch = TrainBatch(
            prompt_ids=prompt_ids,
            completion_ids=completion_ids,
            mask=mask,
            behaviour_logprobs=behaviour,
            advantages=adv.advantages,
            ref_logprobs=ref_lp,
            returns=adv.returns,
            old_values=adv.values,
            fresh=torch.tensor([s.weight_version == self.version for s in ro.samples]),
        )
        metrics.update(_timed(timings, "update", self.update, batch))
        metrics.update(adv_metrics, updated=1.0)
        return metrics

    # -- evaluation -----------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Held-out exact-match accuracy (greedy) and mean reward of sampled completions.

        The reward is the training objective measured on prompts the run never trains on:
        `rl.eval_samples` completions per held-out prompt at the training temperature,
        scored by the run's own scorers.
        """
        if not self.config.data.prompts_eval:
            return {}
        data = read_prompt_rows(self.config.data.prompts_eval, split=EVAL_SPLIT)
        requests = [_request(data, i, i) for i in range(len(data.conversations))]
        out: dict[str, float] = {}
        graded = [r for r in requests if r.ground_truth is not None]
        if graded:  # exact match where the rows have a ground truth
            greedy = SamplingOptions(n=1, temperature=0.0, max_tokens=self.rl.max_new_tokens)
            texts = [g[0].text for g in self.actors.pool.generate(graded, greedy)]
            truths = [r.ground_truth or "" for r in graded]
            right = [exact_match_reward(a, t) == 1.0 for a, t in zip(texts, truths, strict=True)]
            out["heldout_accuracy"] = sum(right) / len(right)
        # Seeded per request: the same draws at every eval step, and the training rollouts'
        # random stream is left as it would be without evaluations.
        sampled = self.generate(requests, self.rl.eval_samples, self.config.run.seed)
        scored = self.score(sampled, data.conversational)
        out["heldout_reward"] = scored.rewards.mean().item()
        out.update(
            {f"heldout_reward/{k}": v.nanmean().item() for k, v in scored.components.items()}
        )
        return out

    # -- the loop -------------------------------------------------------------
    def run(self) -> RegistryEntry:
        """Train from the state's step to `rl.steps`, then register the final checkpoint."""
        start = self.state.step
        if start:
            self.metrics.info(f"resuming at step {start} from {self.state.checkpoint}")
        if start == 0 and self.config.data.prompts_eval:
            baseline = self.evaluate()  # the starting policy, for comparison
            self.metrics.record_eval(0, baseline)
            self.metrics.info(f"before training: {baseline}")
        with ThreadPoolExecutor(max_workers=1) as executor:
            ahead: tuple[Rollouts, float] | None = None
            for step in range(start, self.rl.steps):
                ahead = self.step(step, ahead, executor)
        return register_final(self.config, self.entry)

    def step(
        self, step: int, ahead: tuple[Rollouts, float] | None, executor: ThreadPoolExecutor
    ) -> tuple[Rollouts, float] | None:
        """Run step `step` (0-based) on `ahead` (samples taken during the previous step in
        async mode, with the seconds they took) or fresh samples; returns the next step's
        samples in async mode.

        Timings: `generate` is sampling on the step's critical path (about 0 when the
        samples came ahead), `sampling` the seconds the step's samples took to draw,
        `generate_wait` the wait for the next step's samples after training (async)."""
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        if ahead is None:
            ro = self.generate(self.requests(step))
            timings["sampling"] = time.perf_counter() - t0
        else:
            ro, timings["sampling"] = ahead
        timings["generate"] = time.perf_counter() - t0
        future: Future | None = None
        if self.rl.async_mode and step + 1 < self.rl.steps:
            # Step k+1 is sampled with step k's weights while step k trains: one step stale.
            future = executor.submit(_clocked, self.generate, self.requests(step + 1))
        metrics = self.train_step(ro, timings)
        # The pool must be idle before new weights load into it.
        ahead = None
        if future is not None:
            ahead = _timed(timings, "generate_wait", future.result)
        if metrics["updated"]:
            _timed(timings, "sync", self.sync_weights)
            # Phases of the broadcast to split workers (none when all engines are colocated).
            sync_stats = getattr(self.actors.pool, "sync_stats", {})
            metrics.update({f"weight_sync/{k}": float(v) for k, v in sync_stats.items()})
        done = step + 1
        if done % self.rl.eval_steps == 0 or done == self.rl.steps:
            evaluation = self.evaluate()
            metrics.update(evaluation)
            self.metrics.record_eval(done, evaluation)
        timings["step"] = time.perf_counter() - t0
        pool = self.actors.pool
        self.metrics.log_step(done, metrics, timings, pool.size, len(pool.stats.samples_per_worker))
        self.autoscale(timings)
        if done % self.rl.save_steps == 0 or done == self.rl.steps:
            wanted = ray.get(self.actors.controller.get_rollout_workers.remote())
            self.metrics.push()
            self.entry = save_checkpoint(
                self.config, self.actors.learners[0], done, metrics, rollout_workers=wanted
            )
        return ahead

    def autoscale(self, timings: dict[str, float]) -> None:
        size = self.actors.pool.size
        wanted = wanted_pool_size(
            self.config.rollout.autoscale, size, timings["generate"], timings["step"]
        )
        if wanted is not None:
            self.actors.controller.set_rollout_workers.remote(wanted)


def _request(data: PromptRows, row: int, index: int, seed: int | None = None) -> PromptRequest:
    """Row `row` of `data` as the step's `index`-th prompt."""
    return PromptRequest(
        index, data.conversations[row], data.truths[row], seed=seed, columns=data.columns[row]
    )


def sample_seed(run_seed: int, step: int, index: int) -> int:
    """The sampling seed of prompt `index` of step `step`: 48 bits of a hash, so the
    `seed + i` of a prompt's group_size samples never meet another prompt's."""
    digest = hashlib.blake2b(f"{run_seed}/{step}/{index}".encode(), digest_size=6).digest()
    return int.from_bytes(digest, "big")


def _clocked(fn, *args) -> tuple[Any, float]:
    """(fn(*args), its wall time in seconds)."""
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def _timed(timings: dict[str, float], phase: str, fn, *args):
    """fn(*args), adding its wall time in seconds to `timings[phase]`."""
    t = time.perf_counter()
    out = fn(*args)
    timings[phase] = time.perf_counter() - t
    return out
