"""The HTTP front of rayalign's endpoint: OpenAI-compatible routes over every served model.

`RayalignIngress` extends `ray.serve.llm`'s `OpenAiIngress` (chat and completion
streaming, request validation, OpenAI error bodies) with what a post-training service
needs on top:

- the model set is dynamic: models are the Serve applications named by
  `serving.model_apps.app_name`, looked up at request time, so a checkpoint published or
  removed while serving shows up or disappears without restarting anything (the hooks
  that takes live in `serving.ray_llm_adapter`, with every other use of Ray's private
  modules);
- `POST /v1/score` for reward models, `GET /health`, and a playground page at `/`;
- bearer-key auth on every API route (401), a request-body size limit (413),
  OpenAI-style error bodies for unknown models (404) and malformed requests (400: bad
  JSON or UTF-8, roles outside the chat API), and error messages with nothing of Ray's
  internals in them (the middlewares for these live in `serving.http_guards`);
  `/v1/models` shows each model's stage, step, parent and metrics but no server paths.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable
from importlib import resources
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.deployment import Application
from ray.serve.exceptions import DeploymentUnavailableError, RayServeException
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import ApplicationStatus
from starlette.responses import HTMLResponse, JSONResponse, Response

from rayalign import storage
from rayalign.registry import Kind, Registry
from serving.config import IngressAppArgs, IngressSettings, ReplicaOptions
from serving.http_guards import (
    BearerAuth,
    BodyLimit,
    ErrorBodies,
    bad_role,
    openai_error,
    use_settings,
)
from serving.model_apps import app_name, parse_app_name
from serving.ray_llm_adapter import (
    OPENAI_ROUTES,
    ChatCompletionRequest,
    CompletionRequest,
    DynamicModelsIngress,
    ModelCard,
    ModelList,
    make_fastapi_ingress,
    openai_fastapi_app,
)

# How long the list of served models is reused before Serve is asked again, seconds.
_LOOKUP_TTL_S = 1.0


class RewardScoreRequest(BaseModel):
    """Body of `POST /v1/score`: score one or more assistant replies to a conversation."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="A served reward model's name.")
    messages: list[dict[str, str]] = Field(
        min_length=1, description="The conversation before the reply ({role, content} items)."
    )
    completions: list[str] = Field(
        min_length=1, max_length=256, description="Candidate assistant replies to score."
    )


app = openai_fastapi_app()
app.add_middleware(ErrorBodies)  # around ray.serve.llm's error handling
app.add_middleware(BearerAuth)
app.add_middleware(BodyLimit)  # outermost: the size check runs before anything reads a body


class RayalignIngress(DynamicModelsIngress):
    """OpenAI-compatible ingress over the models published as Serve applications."""

    def __init__(self, settings: IngressSettings) -> None:
        super().__init__()
        use_settings(settings)
        self._registry = Registry(settings.registry) if settings.registry else None
        self._served: dict[str, Kind] = {}
        self._looked_up = 0.0
        self._lookup_lock = asyncio.Lock()

    # Model lookup -----------------------------------------------------------------

    async def _served_models(self) -> dict[str, Kind]:
        """{name: kind} of the running model applications, refreshed at most every TTL."""
        async with self._lookup_lock:  # requests waiting on one lookup share it
            if time.monotonic() - self._looked_up > _LOOKUP_TTL_S:
                status = await asyncio.to_thread(serve.status)
                served = {}
                for app_id, app_status in status.applications.items():
                    parsed = parse_app_name(app_id)
                    if parsed and app_status.status == ApplicationStatus.RUNNING:
                        served[parsed[1]] = parsed[0]
                # Forget handles of removed models: a name published again is looked up anew.
                for gone in set(self._served) - set(served):
                    self.forget(gone)
                self._served, self._looked_up = served, time.monotonic()
        return self._served

    async def _missing(self, model: str | None, kind: Kind) -> JSONResponse | None:
        """The 404/400 response if `model` is not a served model of `kind`, else None."""
        served = await self._served_models()
        if model is None:
            return openai_error(400, "'model' is required.", "missing_model", "model")
        if served.get(model) != kind:
            names = sorted(n for n, k in served.items() if k == kind)
            return openai_error(
                404,
                f"The model '{model}' does not exist or is not a {kind} model; "
                f"served {kind} models: {', '.join(names) or 'none'}.",
                "model_not_found",
                "model",
            )
        return None

    def model_handle(self, model_id: str) -> DeploymentHandle:
        # `_missing` has checked that the model is served before any call reaches here;
        # the model may still have been removed since the list was looked up.
        return self._app_handle(self._served.get(model_id, "chat"), model_id)

    def _app_handle(self, kind: Kind, model: str) -> DeploymentHandle:
        try:
            return serve.get_app_handle(app_name(kind, model))
        except RayServeException:  # removed after the served list said it runs
            self._looked_up = 0.0  # the next lookup sees it gone
            raise ModelGone(model) from None

    async def _unless_gone(self, call: Awaitable[Response], model: str, kind: Kind) -> Response:
        """`call`'s response, or the 404 of a model removed since `_missing` let it pass.

        A removal lands within a second of the served list's refresh. A request in that
        second finds no application (`ModelGone`), or calls a handle cached before the
        removal: its router then has no deployment (`DeploymentUnavailableError`), or,
        while the replicas shut down, it may wait for one that never comes. So while
        the call has not answered, the served list is checked every TTL, and the call is
        cancelled once the model is no longer in it.
        """
        task = asyncio.ensure_future(call)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=_LOOKUP_TTL_S)
                if done:
                    return task.result()
                if (await self._served_models()).get(model) != kind:
                    break  # removed while the request waited: the 404 below
        except (ModelGone, DeploymentUnavailableError):
            self._looked_up = 0.0  # look the served list up again, now
        finally:
            if not task.done():
                task.cancel()
        self.forget(model)  # a name published again gets a new handle
        missing = await self._missing(model, kind)
        if missing is not None:
            return missing
        # Still listed as running, yet its deployment takes no requests: a transient state.
        return openai_error(
            503,
            f"The model '{model}' is not available right now; retry shortly.",
            "model_unavailable",
            "model",
        )

    def _card(self, name: str, kind: Kind) -> ModelCard:
        entry = self._registry.get(name) if self._registry else None
        metadata: dict[str, Any] = {"kind": kind}
        if entry is not None:
            metadata.update(
                stage=entry.stage,
                step=entry.step,
                parent=entry.parent,
                metrics=entry.metrics,
            )  # never the checkpoint's path: clients have no business with the server's disk
        created = int(entry.created) if entry else int(time.time())
        return ModelCard(
            id=name,
            object="model",
            owned_by="rayalign",
            permission=[],
            metadata=metadata,
            created=created,
        )

    # Routes -----------------------------------------------------------------------

    async def models(self) -> ModelList:
        served = await self._served_models()
        return ModelList(data=[self._card(n, k) for n, k in sorted(served.items())])

    async def model_data(self, model: str) -> Response:
        served = await self._served_models()
        if model not in served:
            return openai_error(
                404, f"The model '{model}' does not exist.", "model_not_found", "model"
            )
        return JSONResponse(self._card(model, served[model]).model_dump())

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        return (
            bad_role(body.messages)
            or await self._missing(body.model, "chat")
            or await self._unless_gone(super().chat(body, request), body.model, "chat")
        )

    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        return await self._missing(body.model, "chat") or await self._unless_gone(
            super().completions(body, request), body.model, "chat"
        )

    async def reward_score(self, body: RewardScoreRequest) -> Response:
        missing = await self._missing(body.model, "reward")
        if missing:
            return missing

        async def score() -> Response:
            handle = self._app_handle("reward", body.model)
            scores = await handle.score.remote(body.messages, body.completions)
            data = [{"object": "score", "index": i, "score": s} for i, s in enumerate(scores)]
            return JSONResponse({"object": "list", "model": body.model, "data": data})

        return await self._unless_gone(score(), body.model, "reward")

    async def health(self) -> Response:
        served = await self._served_models()
        return JSONResponse({"status": "ok", "models": sorted(served)})

    async def playground(self) -> HTMLResponse:
        return HTMLResponse(_playground_html())


class ModelGone(LookupError):
    """A model's application is gone although the served list (refreshed every second)
    still had it: the request gets the 404 a later one would."""


def _playground_html() -> str:
    return (resources.files("serving") / "playground.html").read_text()


ENDPOINTS = {
    **OPENAI_ROUTES,
    "reward_score": lambda a: a.post("/v1/score"),
    "health": lambda a: a.get("/health"),
    "playground": lambda a: a.get("/", response_class=HTMLResponse),
}
# `/playground` serves the same page as `/`.
app.add_api_route("/playground", lambda: HTMLResponse(_playground_html()), methods=["GET"])

FastAPIIngress = make_fastapi_ingress(RayalignIngress, endpoint_map=ENDPOINTS, app=app)


def build_ingress_app(args: IngressAppArgs) -> Application:
    """`serving.ingress:build_ingress_app` for `serve deploy` configs: args are an
    `IngressAppArgs` (Serve passes the dict: postponed annotations hide the model from it).
    The API key comes from the environment variable the args name."""
    args = IngressAppArgs.model_validate(args)
    settings = IngressSettings(
        registry=args.registry,
        api_key=os.environ.get(args.api_key_env) if args.api_key_env else None,
        max_body_bytes=args.max_body_bytes,
    )
    return ingress_app(
        settings,
        num_cpus=args.num_cpus,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
    )


def ingress_app(
    settings: IngressSettings, num_cpus: float = 0.1, min_replicas: int = 1, max_replicas: int = 1
) -> Application:
    """The ingress as a Serve application (bind it at route prefix `/`)."""
    replicas = ReplicaOptions(
        min_replicas=min_replicas, max_replicas=max_replicas, target_ongoing_requests=64
    )
    deployment = serve.deployment(
        FastAPIIngress,
        name="RayalignIngress",
        ray_actor_options={"num_cpus": num_cpus},
        autoscaling_config=replicas.autoscaling(),
        max_ongoing_requests=1000,
    )
    # Replicas start in another directory: a relative registry path would not reach them.
    registry = storage.resolve(settings.registry) if settings.registry else None
    return deployment.bind(settings.model_copy(update={"registry": registry}))
