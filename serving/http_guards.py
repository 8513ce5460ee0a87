"""The endpoint's HTTP guards: OpenAI-shaped error bodies, bearer-key auth and a body-size
limit, as ASGI middlewares around `serving.ingress`'s FastAPI app.

They run before FastAPI reads a request (so a 401 or 413 costs no parsing) and after
`ray.serve.llm` has answered (so every JSON error leaves in OpenAI's shape with nothing of
Ray's internals in it). The settings they read are the replica's `IngressSettings`, set
once by the ingress when its replica starts (`use_settings`).
"""

from __future__ import annotations

import hmac
import json
import re
from typing import Any

from starlette.responses import JSONResponse

from serving.config import IngressSettings

# Settings of this replica's ingress, read by the middlewares below (one ingress object
# per replica process sets them through `use_settings`).
_settings = IngressSettings()
# Pages anyone may load: they hold no data, and the page's own calls carry the key.
_PUBLIC_PATHS = {"/", "/playground"}


def use_settings(settings: IngressSettings) -> None:
    """Make `settings` the ones this process's middlewares enforce."""
    global _settings
    _settings = settings


def _error_body(
    status: int, message: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def openai_error(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    """A JSON error response in OpenAI's shape: {"error": {message, type, param, code}}."""
    return JSONResponse(_error_body(status, message, code, param), status_code=status)


# ray.serve.llm words its errors "Message: <for the user>, Internal exception: <Ray's
# internals>, original exception: <the exception again>" (ray.llm's server_utils).
_RAY_ERROR = re.compile(r"^Message: (?P<message>.*?), Internal exception: ", re.DOTALL)
_REQUEST_ID = re.compile(r"\s*\(Request ID: [^)]*\)")
# Roles of the OpenAI chat API; anything else is refused (vLLM would take any role).
CHAT_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


def user_facing_error(status: int, body: Any) -> dict[str, Any]:
    """An error body as clients should see it: OpenAI's shape, the message meant for the
    user only (no Ray internals, exception class names or request ids; the request id is
    in the `x-request-id` header)."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        message = error["message"]
        if match := _RAY_ERROR.match(message):
            message = match["message"]
        message = _REQUEST_ID.sub("", message).strip()
        if status >= 500:
            message = "Internal server error."
        code = error.get("code")
        return _error_body(
            status,
            message or "Request failed.",
            code if isinstance(code, str) else None,
            error.get("param") if isinstance(error.get("param"), str) else None,
        )
    # FastAPI's own errors ({"detail": ...}): an unknown route, a body it could not read.
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        first = detail[0]  # a validation error: say what and where
        where = ".".join(str(part) for part in first.get("loc", ()))
        detail = f"Invalid request: {first.get('msg', 'invalid value')} at {where or 'body'}."
    if not isinstance(detail, str) or status >= 500:
        detail = "Request failed." if status < 500 else "Internal server error."
    return _error_body(status, detail, None)


class ErrorBodies:
    """ASGI middleware: every JSON error response leaves in OpenAI's shape with the
    user-facing message only (`user_facing_error`). Streams are left alone: their errors
    are events inside a 200 response."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start: dict | None = None
        chunks: list[bytes] = []

        async def rewrite(message):
            nonlocal start
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                is_json = headers.get(b"content-type", b"").startswith(b"application/json")
                if message["status"] >= 400 and is_json:
                    start = message  # hold it until the whole body is here
                    return
                return await send(message)
            if start is None or message["type"] != "http.response.body":
                return await send(message)
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            try:
                body = json.loads(b"".join(chunks))
            except ValueError:
                body = None
            data = json.dumps(user_facing_error(start["status"], body)).encode()
            headers = [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
            headers.append((b"content-length", str(len(data)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": data})

        return await self.app(scope, receive, rewrite)


class BearerAuth:
    """ASGI middleware: with an API key set, every route but the static page needs
    `Authorization: Bearer KEY`."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        key = _settings.api_key
        if scope["type"] != "http" or not key or scope["path"] in _PUBLIC_PATHS:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", []))
        given = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip(), key):
            return await self.app(scope, receive, send)
        message = (
            "Missing API key: send 'Authorization: Bearer KEY'."
            if not given
            else "Incorrect API key provided."
        )
        return await openai_error(401, message, "invalid_api_key")(scope, receive, send)


class BodyLimit:
    """ASGI middleware: bodies over `max_body_bytes` get 413 before the app sees them."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = _settings.max_body_bytes
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await self._too_large(limit, scope, receive, send)
        # Chunked or undeclared bodies: read up to the limit, then replay them to the app.
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > limit:
                return await self._too_large(limit, scope, receive, send)
            if message["type"] != "http.request" or not message.get("more_body"):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)

    @staticmethod
    async def _too_large(limit, scope, receive, send):
        response = openai_error(
            413, f"Request body exceeds the limit of {limit} bytes.", "request_too_large"
        )
        return await response(scope, receive, send)


def bad_role(messages: list[Any]) -> JSONResponse | None:
    """400 for the first message whose role the OpenAI chat API does not have."""
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else getattr(message, "role", None)
        if role not in CHAT_ROLES:
            return openai_error(
                400,
                f"Invalid role {role!r} in messages[{i}]; "
                f"expected one of: {', '.join(sorted(CHAT_ROLES))}.",
                "invalid_role",
                f"messages[{i}].role",
            )
    return None
