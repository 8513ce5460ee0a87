"""The RL stage: PPO, GRPO and RLOO as cooperating Ray actors.

One step reads like the algorithm:

    generate -> score -> reference log-probs -> advantages -> update -> sync weights

The driver only moves data between actors (actors/): an elastic vLLM RolloutPool,
RewardScorers, a frozen ReferencePolicy and data-parallel PolicyLearners. Run as
`rayalign train ppo --config FILE`.
"""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import ray
import torch

from actors.batches import PromptRequest, Sample, SamplingOptions, TrainBatch
from actors.policy_learner import PolicyLearner, UpdateOptions
from actors.reference_policy import ReferencePolicy
from actors.reward_scorer import RewardScorer
from actors.rollout_pool import RolloutPool
from actors.run_controller import start_controller
from pipelines.evaluate import read_prompts
from pipelines.stage_registry import StageDefinition
from rayalign import rl_math
from rayalign.cluster import init_ray
from rayalign.registry import Registry, RegistryEntry
from rayalign.rewards import exact_match_reward
from rayalign.rl_config import PPOStageConfig


class LogprobMismatchError(RuntimeError):
    """vLLM's sampling log-probs and the learner's disagree: the weight sync is broken."""


@dataclass
class Rollouts:
    """One step's samples, flattened (prompt-major, `group_size` per prompt)."""

    samples: list[Sample]
    prompts: list[list[dict]]
    ground_truths: list[str | None]

    @property
    def mask(self) -> torch.Tensor:
        width = max(len(s.completion_ids) for s in self.samples)
        return torch.tensor(
            [
                [1.0] * len(s.completion_ids) + [0.0] * (width - len(s.completion_ids))
                for s in self.samples
            ]
        )

    def padded(self, rows: list[list[float]]) -> torch.Tensor:
        width = max(len(s.completion_ids) for s in self.samples)
        return torch.tensor([r + [0.0] * (width - len(r)) for r in rows])


class RLRun:
    """Builds the actors of one RL run and drives its steps."""

    def __init__(self, config: PPOStageConfig) -> None:
        self.config = config
        self.rl = config.rl
        self.run_dir = config.run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.state = self._load_state()
        policy_path = self.state.get("checkpoint") or config.model.name_or_path
        self.prompts, self.truths = read_prompts(config.data.prompts)
        self.controller = start_controller(config.run.name, config.rollout.num_workers)
        self.pool = self._build_pool(policy_path)
        self.scorers = self._build_scorers()
        self.reference = ray.remote(num_cpus=0.5)(ReferencePolicy).remote(
            config.reference or config.model.name_or_path
        )
        self.learners = self._build_learners(policy_path)
        self.version = self.state.get("step", 0)
        self.pool.weight_version = self.version
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))

    # -- construction ---------------------------------------------------------
    def _load_state(self) -> dict:
        path = self.run_dir / "state.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def _build_pool(self, policy_path: str) -> RolloutPool:
        from pipelines.policy_sampling import build_pool

        return build_pool(
            policy_path,
            self.config.rollout,
            seed=self.config.run.seed,
            target=lambda: ray.get(self.controller.get_rollout_workers.remote()),
        )

    def _build_scorers(self) -> list:
        w = self.config.rewards
        cls = ray.remote(num_cpus=0.5)(RewardScorer)
        return [
            cls.remote(w.reward_model, w.functions, w.reward_model_weight)
            for _ in range(w.num_scorers)
        ]

    def _build_learners(self, policy_path: str) -> list:
        c, lc = self.config, self.config.learner
        critic = None
        if self.rl.algorithm == "ppo":
            critic = (
                self.state.get("critic")
                or c.critic
                or c.rewards.reward_model
                or c.model.name_or_path
            )
        cls = ray.remote(
            num_cpus=lc.cpus_per_learner,
            num_gpus=lc.gpus_per_learner,
            resources=lc.custom_resources or None,
        )(PolicyLearner)
        kwargs = dict(
            learning_rate=self.rl.learning_rate,
            critic_path=critic,
            critic_learning_rate=self.rl.critic_learning_rate,
            seed=c.run.seed,
            dtype=c.model.dtype,
        )
        if lc.num_learners == 1:
            learners = [cls.remote(policy_path, **kwargs)]
        else:
            master = ray.get(cls.remote(policy_path, **kwargs).free_address.remote())
            learners = [
                cls.remote(policy_path, rank=i, world_size=lc.num_learners, master=master, **kwargs)
                for i in range(lc.num_learners)
            ]
        if "optimizer" in self.state:
            ray.get([lr.load_optimizer.remote(self.state["optimizer"]) for lr in learners])
        return learners

    # -- one step -------------------------------------------------------------
    def _requests(self, step: int) -> list[PromptRequest]:
        order = list(range(len(self.prompts)))
        per_step = self.rl.prompts_per_step
        epoch, offset = divmod(step * per_step, len(order))
        random.Random(self.config.run.seed + epoch).shuffle(order)
        idx = [order[(offset + i) % len(order)] for i in range(per_step)]
        return [PromptRequest(i, self.prompts[j], self.truths[j]) for i, j in enumerate(idx)]

    def generate(
        self, requests: list[PromptRequest], n: int | None = None, seed: int | None = None
    ) -> Rollouts:
        sampling = SamplingOptions(
            n=n or self.rl.group_size,
            temperature=self.rl.temperature,
            max_tokens=self.rl.max_new_tokens,
            seed=seed,
        )
        grouped = self.pool.generate(requests, sampling)
        samples = [s for group in grouped for s in group]
        prompts = [requests[s.index].messages for s in samples]
        truths = [requests[s.index].ground_truth for s in samples]
        return Rollouts(samples, prompts, truths)

    def score(self, ro: Rollouts) -> tuple[torch.Tensor, dict[str, float]]:
        n = len(self.scorers)
        shards = [list(range(i, len(ro.samples), n)) for i in range(n)]
        outs = ray.get(
            [
                sc.score.remote(
                    [ro.prompts[j] for j in idx],
                    [ro.samples[j].text for j in idx],
                    [ro.ground_truths[j] for j in idx],
                )
                for sc, idx in zip(self.scorers, shards, strict=True)
            ]
        )
        total = torch.zeros(len(ro.samples))
        parts: dict[str, torch.Tensor] = {}
        for idx, (t, p) in zip(shards, outs, strict=True):
            total[idx] = t
            for k, v in p.items():
                parts.setdefault(k, torch.zeros(len(ro.samples)))[idx] = v
        return total, {f"reward/{k}": v.mean().item() for k, v in parts.items()}

    def check_logprobs(self, ro: Rollouts, behaviour: torch.Tensor, mask: torch.Tensor) -> float:
        """Mean |vLLM - learner| log-prob gap on tokens sampled with the learner's current weights."""
        fresh = [i for i, s in enumerate(ro.samples) if s.weight_version == self.version]
        if not fresh:
            return float("nan")
        learner = ray.get(
            self.learners[0].logprobs.remote(
                [ro.samples[i].prompt_ids for i in fresh],
                [ro.samples[i].completion_ids for i in fresh],
                self.rl.temperature,
            )
        )
        T = learner.shape[1]
        gap = rl_math.masked_mean(
            (learner - behaviour[fresh][:, :T]).abs(), mask[fresh][:, :T]
        ).item()
        if gap > self.rl.max_logprob_mismatch:
            raise LogprobMismatchError(
                f"step {self.version}: vLLM and learner log-probs differ by {gap:.4f} on average on the same tokens "
                f"(bound rl.max_logprob_mismatch={self.rl.max_logprob_mismatch}); the weight sync is broken or the "
                "engines disagree numerically"
            )
        return gap

    def advantages(
        self, ro, scores, mask, behaviour, ref_lp
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, dict]:
        kl = rl_math.kl_estimate(behaviour, ref_lp, self.rl.kl_estimator) * mask
        metrics = {"kl": rl_math.masked_mean(kl, mask).item()}
        if self.rl.algorithm == "ppo":
            kl_in_reward = kl if self.rl.kl_in == "reward" else None
            token_r = rl_math.token_rewards(scores, mask, kl_in_reward, self.rl.kl_coef)
            prompt_ids = [s.prompt_ids for s in ro.samples]
            completion_ids = [s.completion_ids for s in ro.samples]
            values = ray.get(self.learners[0].values.remote(prompt_ids, completion_ids))
            adv, returns = rl_math.compute_gae(token_r, values, mask, self.rl.gamma, self.rl.lam)
            # The critic's fit on rollouts it has not trained on yet (verl's vf_explained_var).
            metrics["value_explained_var"] = rl_math.explained_variance(values, returns, mask)
            adv = (adv - rl_math.masked_mean(adv, mask)) / (adv[mask.bool()].std() + 1e-8) * mask
            return adv, returns, values, metrics
        if self.rl.algorithm == "grpo":
            seq = rl_math.grpo_advantages(scores, self.rl.group_size, scale=self.rl.grpo_scale_std)
        else:
            seq = rl_math.rloo_advantages(scores, self.rl.group_size)
        return seq[:, None] * mask, None, None, metrics

    def update(self, batch: TrainBatch) -> dict[str, float]:
        opts = UpdateOptions(
            epochs=self.rl.epochs,
            minibatch_size=self.rl.minibatch_size,
            clip_eps=self.rl.clip_eps,
            clip_eps_high=self.rl.clip_eps_high,
            dual_clip=self.rl.dual_clip,
            value_clip_eps=self.rl.value_clip_eps,
            value_coef=self.rl.value_coef,
            entropy_coef=self.rl.entropy_coef,
            kl_coef_in_loss=self.rl.kl_coef if self.rl.kl_in == "loss" else 0.0,
            kl_estimator=self.rl.kl_estimator,
            aggregation=self.rl.aggregation,
            temperature=self.rl.temperature,
            importance_cap=self.rl.importance_cap if self.rl.async_mode else None,
        )
        per_rank = ray.get([lr.update.remote(batch, opts) for lr in self.learners])
        return {k: sum(m[k] for m in per_rank) / len(per_rank) for k in per_rank[0]}

    def sync_weights(self) -> None:
        self.version += 1
        self.pool.load_weights(ray.get(self.learners[0].export_weights.remote()), self.version)

    def train_step(self, ro: Rollouts, timings: dict[str, float]) -> dict[str, float]:
        """score -> reference log-probs -> advantages -> update (the caller syncs weights)."""
        t = time.perf_counter()
        scores, metrics = self.score(ro)
        timings["score"] = time.perf_counter() - t
        mask = ro.mask
        behaviour = ro.padded([s.logprobs for s in ro.samples])
        metrics["logprob_mismatch"] = self.check_logprobs(ro, behaviour, mask)
        t = time.perf_counter()
        ids = ([s.prompt_ids for s in ro.samples], [s.completion_ids for s in ro.samples])
        ref_lp = ray.get(self.reference.logprobs.remote(*ids, self.rl.temperature))[
            :, : mask.shape[1]
        ]
        timings["reference"] = time.perf_counter() - t
        adv, returns, values, adv_metrics = self.advantages(ro, scores, mask, behaviour, ref_lp)
        batch = TrainBatch(*ids, mask, behaviour, adv, ref_lp, returns, values)
        t = time.perf_counter()
        metrics.update(self.update(batch))
        timings["update"] = time.perf_counter() - t
        metrics.update(
            adv_metrics,
            reward=scores.mean().item(),
            tokens=float(mask.sum()),
            samples=float(len(ro.samples)),
        )
        return metrics

    # -- the loop -----------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Held-out exact-match accuracy (greedy) and mean reward of sampled completions.

        The reward is the training objective measured on prompts the run never trains on:
        `rl.eval_samples` completions per held-out prompt at the training temperature,
        scored by the run's own scorers.
        """
        if not self.config.data.prompts_eval:
            return {}
        convs, truths = read_prompts(self.config.data.prompts_eval)
        requests = [
            PromptRequest(i, c, t) for i, (c, t) in enumerate(zip(convs, truths, strict=True))
        ]
        grouped = self.pool.generate(
            requests, SamplingOptions(n=1, temperature=0.0, max_tokens=self.rl.max_new_tokens)
        )
        accuracy = sum(
            exact_match_reward(g[0].text, t) == 1.0 for g, t in zip(grouped, truths, strict=True)
        ) / len(truths)
        # Seeded per request: the same draws at every eval step, and the training rollouts'
        # random stream is left as it would be without evaluations.
        sampled = self.generate(requests, n=self.rl.eval_samples, seed=self.config.run.seed)
        scores, _ = self.score(sampled)
        return {"heldout_accuracy": accuracy, "heldout_reward": scores.mean().item()}

    def record_eval(self, step: int, metrics: dict[str, float]) -> None:
        with open(self.run_dir / "eval.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")

    def save(self, step: int) -> RegistryEntry:
        path = self.run_dir / f"checkpoint-{step:06d}"
        ray.get(self.learners[0].save.remote(str(path)))
        state = {"step": step, "checkpoint": str(path), "optimizer": str(path / "optimizer.pt")}
        if self.rl.algorithm == "ppo":
            state["critic"] = str(path / "critic")
        tmp = self.run_dir / "state.json.tmp"
        tmp.write_text(json.dumps(state))
        tmp.replace(self.run_dir / "state.json")
        entry = RegistryEntry(
            name=f"{self.config.run.name}-step-{step}",
            stage=self.rl.algorithm,
            kind="chat",
            path=str(path),
            parent=self.config.model.name_or_path,
            step=step,
            metrics=self.last_metrics,
        )
        Registry(self.run_dir.parent).register(entry)
        return entry

    def log(self, step: int, metrics: dict[str, float], timings: dict[str, float]) -> None:
        metrics = {**metrics, **{f"time/{k}": v for k, v in timings.items()}}
        metrics["tokens_per_s"] = metrics["tokens"] / max(timings["generate"], 1e-9)
        metrics["rollout_workers"] = float(self.pool.size)
        # A resize can land mid-step: the workers that generated this step's samples.
        metrics["rollout_workers_used"] = float(len(self.pool.stats.samples_per_worker))
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        self.controller.report.remote({"step": step, "rollout_workers": self.pool.size, **metrics})
        acc = (
            f" held-out acc {metrics['heldout_accuracy']:.3f} reward {metrics['heldout_reward']:.3f}"
            if "heldout_accuracy" in metrics
            else ""
        )
        print(
            f"[{self.config.run.name}] step {step}/{self.rl.steps} reward {metrics['reward']:.3f} kl {metrics['kl']:.4f}"
            f" mismatch {metrics['logprob_mismatch']:.4f} workers {self.pool.size}{acc} ({timings['step']:.1f}s)",
            flush=True,
        )

    def autoscale(self, timings: dict[str, float]) -> None:
        auto = self.config.rollout.autoscale
        if auto is None:
            return
        share = timings["generate"] / max(timings["step"], 1e-9)
        size = self.pool.size
        if share > auto.generation_share and size < auto.max_workers:
            self.controller.set_rollout_workers.remote(size + 1)
        elif share < auto.generation_share / 2 and size > auto.min_workers:
            self.controller.set_rollout_workers.remote(size - 1)

    def run(self) -> RegistryEntry:
        start = self.state.get("step", 0)
        if start:
            print(
                f"[{self.config.run.name}] resuming at step {start} from {self.state['checkpoint']}",
                flush=True,
            )
        self.last_metrics: dict[str, float] = {}
        if start == 0 and self.config.data.prompts_eval:
            baseline = self.evaluate()  # the starting policy, for comparison
            self.record_eval(0, baseline)
            print(f"[{self.config.run.name}] before training: {baseline}", flush=True)
        executor = ThreadPoolExecutor(max_workers=1)
        ahead: Rollouts | None = None
        entry = None
        for step in range(start, self.rl.steps):
            timings: dict[str, float] = {}
            t0 = time.perf_counter()
            ro = ahead or self.generate(self._requests(step))
            timings["generate"] = time.perf_counter() - t0
            future: Future | None = None
            if self.rl.async_mode and step + 1 < self.rl.steps:
                # Step k+1 is sampled with step k's weights while step k trains: one step stale.
                future = executor.submit(self.generate, self._requests(step + 1))
            metrics = self.train_step(ro, timings)
            ahead = future.result() if future is not None else None
            t = time.perf_counter()
            self.sync_weights()
            timings["sync"] = time.perf_counter() - t
            if (step + 1) % self.rl.eval_steps == 0 or step + 1 == self.rl.steps:
                evaluation = self.evaluate()
                metrics.update(evaluation)
                self.record_eval(step + 1, evaluation)
            timings["step"] = time.perf_counter() - t0
            self.last_metrics = metrics
            self.log(step + 1, metrics, timings)
            self.autoscale(timings)
            if (step + 1) % self.rl.save_steps == 0 or step + 1 == self.rl.steps:
                entry = self.save(step + 1)
        executor.shutdown()
        return self.finish(entry)

    def finish(self, entry: RegistryEntry | None) -> RegistryEntry:
        if entry is None:  # rerun of a finished run: nothing left to train
            entry = Registry(self.run_dir.parent).get(
                f"{self.config.run.name}-step-{self.rl.steps}"
            )
        final = RegistryEntry(**{**entry.__dict__, "name": self.config.run.name})
        if self.config.data.prompts_eval:
            from pipelines.evaluate import evaluate

            final.metrics = {
                **final.metrics,
                "heldout_accuracy": evaluate(final.path, self.config.data.prompts_eval).accuracy,
            }
        Registry(self.run_dir.parent).register(final)
        (self.run_dir / "result.json").write_text(json.dumps(final.__dict__, indent=2))
        return final

    def shutdown(self) -> None:
        self.pool.shutdown()
        for actor in [*self.scorers, self.reference, *self.learners, self.controller]:
            ray.kill(actor)


def run_rl(config: PPOStageConfig) -> RegistryEntry:
    """Run (or resume) an RL stage to its last step and register its checkpoints."""
    c = config
    init_ray(
        c.rollout.num_workers * c.rollout.cpus_per_worker
        + c.learner.num_learners * c.learner.cpus_per_learner
        + 0.5 * (c.rewards.num_scorers + 1)
    )
    Path(config.run_dir).mkdir(parents=True, exist_ok=True)
    (config.run_dir / "config.json").write_text(
        json.dumps(config.model_dump(mode="json", by_alias=True), indent=2)
    )
    run = RLRun(config)
    try:
        return run.run()
    finally:
        run.shutdown()


STAGE = StageDefinition("ppo", PPOStageConfig, run_rl)
