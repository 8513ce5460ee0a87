"""Error bodies as clients see them: OpenAI's shape, the user-facing message only.

The live endpoint's tests (test_endpoint.py) send the same kinds of bad input through Ray
Serve; these check the middleware and the message clean-up on their own, without Ray."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.responses import JSONResponse
from starlette.testclient import TestClient

from serving.http_guards import ErrorBodies, bad_role, user_facing_error

# What ray.serve.llm returns for a request vLLM refuses (Ray 2.60, server_utils).
RAY_ERROR = {
    "error": {
        "message": "Message: This model's maximum context length is 256 tokens. "
        "(Request ID: 5f1c-2), Internal exception: ray.llm._internal.serve.core."
        "VLLMValidationError: This model's maximum context length is 256 tokens. "
        "(Request ID: 5f1c-2), original exception: This model's maximum context length",
        "type": "VLLMValidationError",
        "param": None,
        "code": 400,
    }
}


class Body(BaseModel):
    model: str


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()

    @app.post("/v1/echo")
    async def echo(body: Body):
        return {"model": body.model}

    @app.post("/v1/refused")
    async def refused():
        return JSONResponse(RAY_ERROR, status_code=400)

    @app.post("/v1/broken")
    async def broken():
        return JSONResponse({"error": {"message": "Message: KeyError 'x' in /srv/a.py"}}, 500)

    app.add_middleware(ErrorBodies)
    return TestClient(app)


def _error(reply, status: int) -> dict:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-length"] == str(len(reply.content))
    body = reply.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_ray_internals_leave_the_message(client):
    error = _error(client.post("/v1/refused"), 400)
    assert error["message"] == "This model's maximum context length is 256 tokens."
    assert error["type"] == "invalid_request_error"
    for leaked in ("Internal exception", "ray.llm", "Request ID", "VLLMValidationError"):
        assert leaked not in str(error)


def test_server_errors_say_nothing_of_the_server(client):
    error = _error(client.post("/v1/broken"), 500)
    assert error == {
        "message": "Internal server error.",
        "type": "server_error",
        "param": None,
        "code": None,
    }


def test_frameworks_own_errors_get_the_openai_shape(client):
    headers = {"content-type": "application/json"}
    bad_utf8 = client.post("/v1/echo", content=b'{"model": "\xff\xfe"}', headers=headers)
    assert "parsing the body" in _error(bad_utf8, 400)["message"]
    assert _error(client.get("/v1/nowhere"), 404)["message"] == "Not Found"
    missing = _error(client.post("/v1/echo", json={}), 422)
    assert "model" in missing["message"]
    assert client.post("/v1/echo", json={"model": "a"}).json() == {"model": "a"}


def test_only_the_chat_apis_roles_pass():
    ok = [{"role": r, "content": "x"} for r in ("system", "developer", "user", "assistant")]
    assert bad_role(ok) is None
    refused = bad_role([*ok, {"role": "wizard", "content": "x"}])
    assert refused.status_code == 400
    assert b"messages[4].role" in refused.body and b"wizard" in refused.body


def test_messages_keep_user_text_with_commas():
    body = {"error": {"message": "Message: a, b, c (Request ID: 1), Internal exception: z"}}
    assert user_facing_error(400, body)["error"]["message"] == "a, b, c"
