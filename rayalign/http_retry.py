"""HTTP requests to model servers that retry what is worth retrying, within a time budget.

Model servers (our endpoint, vLLM's server, hosted APIs) shed load with 429 and 503, restart
behind 502/504, and drop connections. Each of those is retried with exponential backoff and
jitter (or the server's `Retry-After`, when it sends one); any other answer, a 400 for
instance, is returned at once: asking again would get the same answer. The time one call
may take, retries included, is bounded.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import httpx

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and for how long to retry one request (the caller's config sets both)."""

    max_retries: int
    budget_s: float  # the whole call, first attempt and retries
    backoff_s: float = 0.5  # before the first retry; doubles each time
    max_backoff_s: float = 10.0

    def delay(self, attempt: int, retry_after: str | None) -> float:
        """Seconds to wait before retry number `attempt` (1-based)."""
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), self.max_backoff_s)
            except ValueError:
                pass  # an HTTP date: fall back to our own backoff
        base = min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)
        return base * random.uniform(0.5, 1.0)


class RetriesExhausted(RuntimeError):
    """Every attempt failed with a retryable error; the message says what the last one was."""


def post_with_retries(
    client: httpx.Client, path: str, json: dict, policy: RetryPolicy
) -> httpx.Response:
    """POST `json` to `path`, retrying timeouts, dropped connections, 429 and 5xx.

    Returns the first response that is not retryable (success or a client error such as
    400, for the caller to report). Raises RetriesExhausted when the retries or the time
    budget run out, naming the attempts made and the last failure.
    """
    start = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        retry_after = None
        try:
            reply = client.post(path, json=json)
        except (httpx.TimeoutException, httpx.TransportError) as err:
            failure = f"{type(err).__name__}: {err}"
        else:
            if reply.status_code not in RETRY_STATUSES:
                return reply
            failure = f"HTTP {reply.status_code}: {reply.text[:200]}"
            retry_after = reply.headers.get("retry-after")
        wait = policy.delay(attempt, retry_after)
        spent = time.monotonic() - start
        if attempt > policy.max_retries or spent + wait > policy.budget_s:
            raise RetriesExhausted(
                f"{path} failed {attempt} time(s) in {spent:.1f} s "
                f"(retries {policy.max_retries}, budget {policy.budget_s:g} s); last: {failure}"
            )
        time.sleep(wait)


def post_for_json(
    client: httpx.Client,
    path: str,
    json: dict,
    policy: RetryPolicy,
    label: str,
    error: type[Exception],
) -> Any:
    """`post_with_retries`, then the 200 reply's JSON body. Every failure (retries spent,
    a transport error, another status, a body that is not JSON) raises `error` with a
    message that starts with `label`, the server the caller is talking to."""
    try:
        reply = post_with_retries(client, path, json, policy)
    except RetriesExhausted as err:
        raise error(f"{label}: {err}") from None
    except httpx.HTTPError as err:
        raise error(f"{label}: request failed ({err})") from None
    if reply.status_code != 200:
        raise error(f"{label}: HTTP {reply.status_code} from {path}: {reply.text[:500]}")
    try:
        return reply.json()
    except ValueError:
        raise error(f"{label}: not JSON from {path}: {reply.text[:500]}") from None
