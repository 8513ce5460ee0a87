"""Chat models the safety stages talk to: an OpenAI-compatible endpoint or a local checkpoint.

Both answer `complete(conversations) -> texts`, one text per conversation, in order.
The endpoint client speaks the OpenAI chat-completions API over HTTP (our own
`rayalign serve`, vLLM's server, a hosted API); a checkpoint runs on a vLLM generation
worker in the cluster.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import httpx

from pipelines.safety_config import ChatModelSpec
from rayalign.http_retry import RetryPolicy, post_for_json


class ChatModel(Protocol):
    label: str

    def complete(self, conversations: list[list[dict]]) -> list[str]:
        """The assistant's reply to each conversation."""
        ...

    def close(self) -> None: ...


class EndpointError(RuntimeError):
    """The endpoint answered with an error or something that is not a chat completion."""


class EndpointChat:
    """Chat completions from an OpenAI-compatible server, `concurrency` requests at a time.
    Timeouts, dropped connections, 429 and 5xx are retried with backoff within
    `retry_budget_s`; other errors (a 400) are reported at once."""

    def __init__(self, spec: ChatModelSpec) -> None:
        self.spec = spec
        self.label = spec.label
        key = os.environ.get(spec.api_key_env or "", "") or "none"
        self._http = httpx.Client(
            base_url=spec.base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {key}"},
            timeout=spec.timeout_s,
        )
        self._retry = RetryPolicy(max_retries=spec.max_retries, budget_s=spec.retry_budget_s)

    def _one(self, messages: list[dict]) -> str:
        body = {
            "model": self.spec.model,
            "messages": messages,
            "temperature": self.spec.temperature,
            "max_tokens": self.spec.max_tokens,
        }
        reply = post_for_json(
            self._http, "/chat/completions", body, self._retry, self.label, EndpointError
        )
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise EndpointError(f"{self.label}: not a chat completion: {reply!r:.500}") from None

    def complete(self, conversations: list[list[dict]]) -> list[str]:
        with ThreadPoolExecutor(self.spec.concurrency) as pool:
            return list(pool.map(self._one, conversations))

    def close(self) -> None:
        self._http.close()


class CheckpointChat:
    """Replies from a local checkpoint on a vLLM rollout pool (greedy unless temperature > 0)."""

    def __init__(self, spec: ChatModelSpec, rollout) -> None:
        from pipelines.policy_sampling import build_pool

        self.spec = spec
        self.label = spec.label
        self.pool = build_pool(spec.path, rollout, seed=0)

    def complete(self, conversations: list[list[dict]]) -> list[str]:
        from pipelines.policy_sampling import sample_texts

        texts = sample_texts(
            self.pool,
            conversations,
            n=1,
            temperature=self.spec.temperature,
            max_tokens=self.spec.max_tokens,
        )
        return [t[0] for t in texts]

    def close(self) -> None:
        self.pool.shutdown()


def build_chat_model(spec: ChatModelSpec, rollout=None) -> ChatModel:
    """The client for `spec`; `rollout` (a RolloutConfig) places a checkpoint's worker."""
    if spec.kind == "endpoint":
        return EndpointChat(spec)
    return CheckpointChat(spec, rollout)
