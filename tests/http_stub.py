"""A real local HTTP server speaking OpenAI's chat-completions API (and rayalign's
`/v1/score`) that fails on purpose."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FailingServer:
    """An OpenAI-style /v1/chat/completions that plays `script` (one entry per request,
    then `then` for every later one): an HTTP status (200 answers "re: " + the last
    message), "drop" (close without answering) or "hang" (answer after 3 s).

    `/v1/score` plays the same script; its 200 scores each completion by its length.
    `bodies` and `headers` keep every request's JSON body and headers."""

    def __init__(self) -> None:
        self.script: list[object] = []
        self.then: object = 200
        self.requests = 0
        self.bodies: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests += 1
                    server.bodies.append(body)
                    server.headers.append(dict(self.headers))
                    step = server.script.pop(0) if server.script else server.then
                if step == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if step == "hang":
                    time.sleep(3)
                    step = 200
                if step == 200 and self.path.endswith("/score"):
                    data = [
                        {"object": "score", "index": i, "score": float(len(c))}
                        for i, c in enumerate(body["completions"])
                    ]
                    self._send(200, {"object": "list", "data": data[::-1]})
                elif step == 200:
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


@contextmanager
def failing_server() -> Iterator[FailingServer]:
    """A `FailingServer` on a free loopback port for the duration of the block."""
    s = FailingServer()
    thread = threading.Thread(target=s.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield s
    finally:
        s.httpd.shutdown()
        s.httpd.server_close()
