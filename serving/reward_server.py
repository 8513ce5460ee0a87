"""A reward-model checkpoint as a Serve deployment: (conversation, completion) -> score.

Requests are batched across callers with `serve.batch`: concurrent scoring requests
share one forward pass of up to `max_batch_size` pairs.
"""

from __future__ import annotations

import asyncio

from ray import serve

from serving.config import RewardModelOptions


class RewardModelServer:
    """Loads a sequence-classification checkpoint (one logit) and scores pairs with it."""

    def __init__(self, path: str, options: RewardModelOptions) -> None:
        from rayalign.models.reward import load_reward_model

        self.model, self.tokenizer = load_reward_model(path)
        self._score_pairs.set_max_batch_size(options.max_batch_size)
        self._score_pairs.set_batch_wait_timeout_s(options.batch_wait_timeout_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _score_pairs(self, pairs: list[tuple[list[dict], str]]) -> list[float]:
        from rayalign.models.reward import score

        prompts = [p for p, _ in pairs]
        completions = [[{"role": "assistant", "content": c}] for _, c in pairs]
        # Off the event loop: a forward pass must not stall the replica's other requests.
        scores = await asyncio.to_thread(
            score, self.model, self.tokenizer, prompts, completions, len(pairs)
        )
        return scores.tolist()

    async def score(self, messages: list[dict], completions: list[str]) -> list[float]:
        """Reward of each completion as the assistant's reply to `messages`."""
        return list(await asyncio.gather(*(self._score_pairs((messages, c)) for c in completions)))
