"""Retries against a real local HTTP server that fails on purpose: 503s, 429 with
Retry-After, dropped connections and hangs are retried; a 400 is not; the budget holds."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipelines.chat_models import EndpointChat, EndpointError
from pipelines.safety_config import ChatModelSpec


class FailingServer:
    """An OpenAI-style /v1/chat/completions that plays `script` (one entry per request,
    then answers normally): an HTTP status, "drop" (close without answering) or "hang"
    (answer after 3 s)."""

    def __init__(self) -> None:
        self.script: list[object] = []
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests += 1
                step = server.script.pop(0) if server.script else 200
                if step == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if step == "hang":
                    time.sleep(3)
                    step = 200
                if step == 200:
                    text = "re: " + body["messages"][-1]["content"]
                    self._send(200, {"choices": [{"message": {"content": text}}]})
                else:
                    headers = {"Retry-After": "0.2"} if step == 429 else {}
                    self._send(step, {"error": {"message": f"failing on purpose: {step}"}}, headers)

            def _send(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


@pytest.fixture
def server() -> Iterator[FailingServer]:
    s = FailingServer()
    thread = threading.Thread(target=s.httpd.serve_forever, daemon=True)
    thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


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
