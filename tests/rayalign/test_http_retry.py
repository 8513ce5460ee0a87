"""Retries against a real local HTTP server that fails on purpose: 503s, 429 with
Retry-After, dropped connections and hangs are retried; a 400 is not; the budget holds."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from pipelines.chat_models import EndpointChat, EndpointError
from pipelines.safety_config import ChatModelSpec
from tests.http_stub import FailingServer, failing_server


@pytest.fixture
def server() -> Iterator[FailingServer]:
    with failing_server() as s:
        yield s


def _chat(server: FailingServer, **spec) -> EndpointChat:
    return EndpointChat(
        ChatModelSpec(kind="endpoint", base_url=server.url, model="m", concurrency=1, **spec)
    )


def _ask(chat: EndpointChat, text: str = "hi") -> str:
    return chat.complete([[{"role": "user", "content": text}]])[0]


def test_overload_and_dropped_connections_are_retried(server):
    server.script = [503, 429, "drop", 502]
    chat = _chat(server, timeout_s=2.0)
    start = time.monotonic()
    assert _ask(chat) == "re: hi"
    assert server.requests == 5
    # Waits: backoff 0.25-0.5 s, the server's Retry-After 0.2 s, backoff 1-2 s and 2-4 s.
    assert time.monotonic() - start < 12
    chat.close()


def test_a_request_that_hangs_past_the_timeout_is_sent_again(server):
    server.script = ["hang"]
    chat = _chat(server, timeout_s=1.0)
    assert _ask(chat) == "re: hi"
    assert server.requests == 2
    chat.close()


def test_a_client_error_is_reported_at_once(server):
    server.script = [400]
    chat = _chat(server)
    with pytest.raises(EndpointError, match="HTTP 400.*failing on purpose: 400"):
        _ask(chat)
    assert server.requests == 1
    chat.close()


def test_retries_stop_at_their_limit_and_say_what_failed(server):
    server.script = [503] * 10
    chat = _chat(server, max_retries=2)
    with pytest.raises(EndpointError, match=r"failed 3 time\(s\).*HTTP 503"):
        _ask(chat)
    assert server.requests == 3
    chat.close()


def test_the_time_budget_bounds_the_whole_call(server):
    server.script = ["hang"] * 10
    chat = _chat(server, timeout_s=1.0, max_retries=100, retry_budget_s=2.5)
    start = time.monotonic()
    with pytest.raises(EndpointError, match="budget 2.5 s.*ReadTimeout"):
        _ask(chat)
    assert time.monotonic() - start < 2.5 + 1.0 + 0.5  # budget + one timeout + slack
    chat.close()
