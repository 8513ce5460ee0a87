"""The one place rayalign reaches into `ray.llm`'s private modules.

Written against Ray 2.60 (pyproject pins `ray==2.60.*`); check this module first when the
pin moves. Everything else in the repository imports these names from here, never from
`ray.llm._internal`. Where `ray.serve.llm` has a public name it is used instead.

- `DynamicModelsIngress` is `ray.serve.llm`'s OpenAI ingress with a model set looked up
  per request: the public ingress knows its models when it is bound, ours come and go
  as checkpoints are published. It overrides two private hooks of the ingress.
- `EngineInitCallback` is the hook that runs in a serving replica before its vLLM engine
  starts (`LLMConfig.callback_config`); `ray.serve.llm` exports no callback base class.
"""

from __future__ import annotations

import asyncio
import os

# Private (no public export in Ray 2.60), one line each for what it is needed for:
# - CallbackBase: the base class `LLMConfig.callback_config.callback_class` must subclass;
#   CallbackConfig: the value of that field (the bench resets it to Ray's default).
# - ModelCard, ModelList: the `/v1/models` response types; the public
#   `ray.serve.llm.openai_api_models` exports the request and completion types only.
# - DEFAULT_ENDPOINTS: the route decorators (paths, response models) of the OpenAI routes
#   that `make_fastapi_ingress` binds; there is no public copy of them.
# - VLLMEngineConfig: the engine config an `LLMConfig` caches; `InProcessWorkerConfig`
#   changes the executor it asks vLLM for (see there).
# - init: builds the FastAPI app with ray.serve.llm's middlewares (OpenAI error bodies for
#   its exceptions, request ids, CORS, HTTP metrics). The public `make_fastapi_ingress`
#   builds that app only when given none, and rayalign adds middlewares and routes first.
from ray.llm._internal.common.callbacks.base import CallbackBase, CallbackConfig
from ray.llm._internal.serve.core.configs.openai_api_models import ModelCard, ModelList
from ray.llm._internal.serve.core.ingress.ingress import DEFAULT_ENDPOINTS
from ray.llm._internal.serve.core.ingress.ingress import init as openai_fastapi_app
from ray.llm._internal.serve.engines.vllm.vllm_models import VLLMEngineConfig
from ray.serve.handle import DeploymentHandle

# Public names where ray.serve.llm has them.
from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

__all__ = [
    "OPENAI_ROUTES",
    "CallbackConfig",
    "ChatCompletionRequest",
    "CompletionRequest",
    "DynamicModelsIngress",
    "EngineInitCallback",
    "engine_init_callback",
    "ModelCard",
    "ModelList",
    "make_fastapi_ingress",
    "openai_fastapi_app",
]

# The OpenAI routes rayalign's ingress keeps from ray.serve.llm's, with their paths.
OPENAI_ROUTES = {
    name: DEFAULT_ENDPOINTS[name] for name in ("models", "model_data", "chat", "completions")
}


class DynamicModelsIngress(OpenAiIngress):
    """`OpenAiIngress` serving whichever models `model_handle` names at request time.

    Subclasses implement `model_handle(model_id)` and check a request's model before
    calling the inherited `chat`/`completions` (which then take it as given), and call
    `forget(model_id)` when a model goes away, so a name published again gets a new handle.
    """

    def __init__(self) -> None:
        super().__init__(llm_deployments={}, model_cards={})

    def model_handle(self, model_id: str) -> DeploymentHandle:
        """The deployment handle serving `model_id` (a served model's name)."""
        raise NotImplementedError

    def forget(self, model_id: str) -> None:
        """Drop the cached handle of a model that is no longer served."""
        self._configured_serve_handles.pop(model_id, None)

    # Private hook: replaces the lookup in the `llm_deployments` fixed at bind time.
    def _get_configured_serve_handle(self, model_id: str) -> DeploymentHandle:
        if model_id not in self._configured_serve_handles:
            handle = self.model_handle(model_id).options(stream=True)
            self._configured_serve_handles[model_id] = handle
        return self._configured_serve_handles[model_id]

    # Private hook: the base class resolves a missing model against its fixed model cards;
    # here the subclass has checked the model before any call reaches this.
    async def _get_model_id(self, model: str | None) -> str:
        return model


class EngineInitCallback(CallbackBase):
    """Runs in the serving replica before its vLLM engine starts.

    - Serves a checkpoint in object storage (`s3://...`) from a copy in the node's cache
      (`rayalign.storage.local_copy`, made once per content).
    - Skips `ray.serve.llm`'s per-node "download" task for a checkpoint already on a
      local (or shared) filesystem: it downloads nothing there, yet starts one more
      worker process per engine, which imports vLLM (~12 s of CPU each; seven engines
      on two cores queue behind them).
    - Drops an inherited VLLM_CPU_KVCACHE_SPACE (whole GiB, and it overrides the
      engine's own `kv_cache_memory_bytes`) before the engine's processes start.
    - On CPU, runs the vLLM worker inside the engine-core process
      (`InProcessWorkerConfig`).
    """

    async def on_before_node_init(self) -> None:
        from rayalign.storage import is_uri, local_copy

        source = self.llm_config.model_loading_config.model_source
        if isinstance(source, str) and is_uri(source):  # a checkpoint in object storage
            source = await asyncio.to_thread(local_copy, source)
            self.llm_config.model_loading_config.model_source = source
            # The engine config is built (and cached) before this callback runs.
            self.llm_config.get_engine_config().hf_model_id = source
        if isinstance(source, str) and os.path.isdir(source):
            self.ctx.run_init_node = False
        if "kv_cache_memory_bytes" in self.llm_config.engine_kwargs:
            os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
        if os.environ.get(IN_PROCESS_WORKER_ENV) == "0":
            config = self.llm_config.get_engine_config()  # built once, cached by LLMConfig
            if type(config) is VLLMEngineConfig:
                config.__class__ = InProcessWorkerConfig


# Set to "0" in a CPU replica's environment (serving.model_apps), it turns on
# `InProcessWorkerConfig`; vLLM's CPU platform reads it to keep the in-process executor.
IN_PROCESS_WORKER_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"


class InProcessWorkerConfig(VLLMEngineConfig):
    """The engine config of a CPU replica, asking vLLM for its in-process executor.

    `ray.serve.llm` asks vLLM for the multiprocessing executor on CPU, which spawns one
    worker process beside the engine-core process even for a single worker. Each spawned
    process imports torch and vLLM again: on two cores the second one cost 12.7 s of a
    tiny model's 31 s engine start (18.5 s without it, measured with vLLM's `AsyncLLM`
    directly). The engine core still runs in its own process (`AsyncLLM` always does);
    only the worker moves into it.

    vLLM wants the multiprocessing executor on CPU so that the worker can pin OpenMP
    threads before torch starts them; rayalign's CPU replicas never pin
    (VLLM_CPU_OMP_THREADS_BIND=nobind), and the GenerationWorker actors run vLLM's
    worker in process the same way. vLLM keeps the in-process executor only where
    VLLM_ENABLE_V1_MULTIPROCESSING is 0 (its CPU platform's check), which changes nothing
    else for `AsyncLLM`.
    """

    __slots__ = ()

    def get_initialization_kwargs(self) -> dict:
        kwargs = super().get_initialization_kwargs()
        kwargs["distributed_executor_backend"] = "uni"
        return kwargs


def engine_init_callback() -> CallbackConfig:
    """`LLMConfig.callback_config` running `EngineInitCallback` (named by its import path:
    the replica imports it)."""
    return CallbackConfig(callback_class=f"{__name__}:{EngineInitCallback.__qualname__}")
