"""A reward model behind HTTP: rayalign's own `POST /v1/score`, or any server speaking it.

The protocol: `POST {base_url}/score` with `{"model", "messages", "completions"}` (one
conversation, up to 256 candidate replies) answers `{"data": [{"index", "score"}...]}`.
Completions of one prompt (a GRPO group) go in one request; requests run a few at a
time. Timeouts, dropped connections, 429 and 5xx are retried with backoff within a time
budget (`rayalign.http_retry`); anything else is reported at once, naming the server.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import httpx

from rayalign.http_retry import RetryPolicy, post_for_json

MAX_COMPLETIONS = 256  # per request, as /v1/score takes them


class RemoteRewardError(RuntimeError):
    """The reward server failed, or answered something that is not a list of scores."""


class RemoteRewardModel:
    """Scores (conversation, reply) pairs on a `/v1/score` server.

    Args:
        base_url: the server's base URL including /v1, e.g. http://10.0.0.5:8000/v1.
        model: the served reward model's name.
        api_key: sent as `Authorization: Bearer KEY` when set.
        timeout_s: per-request timeout; `max_retries` and `retry_budget_s` bound retries.
        concurrency: requests in flight at once.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        max_retries: int = 3,
        retry_budget_s: float = 120.0,
        concurrency: int = 4,
    ) -> None:
        self.model = model
        self.label = f"reward server {base_url} (model {model!r})"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s)
        self._retry = RetryPolicy(max_retries=max_retries, budget_s=retry_budget_s)
        self._concurrency = concurrency

    @classmethod
    def from_env(cls, api_key_env: str | None, **kwargs) -> RemoteRewardModel:
        """With the API key read from the environment variable `api_key_env` (if any)."""
        return cls(api_key=os.environ.get(api_key_env) if api_key_env else None, **kwargs)

    def score(self, prompts: list[list[dict]], completions: list[str]) -> list[float]:
        """One score per (prompt, completion), in order."""
        groups: dict[str, list[int]] = {}
        for i, messages in enumerate(prompts):
            groups.setdefault(repr(messages), []).append(i)
        requests = [
            idx[start : start + MAX_COMPLETIONS]
            for idx in groups.values()
            for start in range(0, len(idx), MAX_COMPLETIONS)
        ]
        scores = [0.0] * len(completions)
        with ThreadPoolExecutor(self._concurrency) as pool:
            results = pool.map(
                lambda idx: self._one(prompts[idx[0]], [completions[i] for i in idx]), requests
            )
            for idx, values in zip(requests, results, strict=True):
                for i, value in zip(idx, values, strict=True):
                    scores[i] = value
        return scores

    def _one(self, messages: list[dict], completions: list[str]) -> list[float]:
        body = {"model": self.model, "messages": messages, "completions": completions}
        reply = post_for_json(
            self._http, "/score", body, self._retry, self.label, RemoteRewardError
        )
        try:
            data = sorted(reply["data"], key=lambda d: d["index"])
            values = [float(d["score"]) for d in data]
        except (ValueError, KeyError, TypeError):
            raise RemoteRewardError(f"{self.label}: not a list of scores: {reply!r:.500}") from None
        if len(values) != len(completions):
            raise RemoteRewardError(
                f"{self.label}: {len(values)} scores for {len(completions)} completions"
            )
        return values

    def close(self) -> None:
        self._http.close()
