"""One Serve application per served checkpoint.

Each registered checkpoint runs as its own Serve application, named by its kind and
registry name (`rayalign-chat-sft`, `rayalign-reward-rm`). Publishing a checkpoint adds
an application and removing one deletes it; Serve leaves every other application, and
the requests streaming from it, untouched. The ingress finds the models by these names.

Chat checkpoints run in `ray.serve.llm`'s `LLMServer` (vLLM); reward models run in
`RewardModelServer` (transformers, batched).
"""

from __future__ import annotations

import os
from typing import Any

from ray import serve
from ray.serve.deployment import Application

from rayalign.registry import Kind, RegistryEntry
from serving.config import ChatModelOptions, RewardModelOptions

APP_PREFIX = "rayalign-"


def app_name(kind: Kind, name: str) -> str:
    """The Serve application name of a served checkpoint."""
    return f"{APP_PREFIX}{kind}-{name}"


def parse_app_name(app: str) -> tuple[Kind, str] | None:
    """(kind, model name) of one of our model applications, else None."""
    for kind in ("chat", "reward"):
        prefix = f"{APP_PREFIX}{kind}-"
        if app.startswith(prefix):
            return kind, app[len(prefix) :]
    return None


try:  # Ray exposes the init hook from an internal module only
    from ray.llm._internal.common.callbacks.base import CallbackBase
except ImportError:  # another Ray: engines keep the default initialisation
    CallbackBase = None

if CallbackBase is not None:

    class EngineInitCallback(CallbackBase):
        """Runs in the serving replica before its vLLM engine starts.

        - Skips `ray.serve.llm`'s per-node "download" task for a checkpoint already on a
          local (or shared) filesystem: it downloads nothing there, yet starts one more
          worker process per engine, which imports vLLM (~12 s of CPU each; seven engines
          on two cores queue behind them).
        - Drops an inherited VLLM_CPU_KVCACHE_SPACE (whole GiB, and it overrides the
          engine's own `kv_cache_memory_bytes`) before the engine's processes start.
        """

        async def on_before_node_init(self) -> None:
            source = self.llm_config.model_loading_config.model_source
            if isinstance(source, str) and os.path.isdir(source):
                self.ctx.run_init_node = False
            if "kv_cache_memory_bytes" in self.llm_config.engine_kwargs:
                os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)


def llm_config(name: str, path: str, options: ChatModelOptions):
    """The `ray.serve.llm.LLMConfig` serving checkpoint `path` as model `name`."""
    from ray.serve.llm import LLMConfig

    engine_kwargs: dict[str, Any] = {"dtype": options.dtype, "enforce_eager": options.enforce_eager}
    if options.max_model_len:
        engine_kwargs["max_model_len"] = options.max_model_len
    if options.use_gpu:
        engine_kwargs["gpu_memory_utilization"] = options.gpu_memory_utilization
        bundle = {"CPU": options.cpus_per_replica, "GPU": 1}
        env = {}
    else:
        bundle = {"CPU": options.cpus_per_replica, "GPU": 0}
        # Engines that share cores must not pin OpenMP threads to the same ones.
        env = {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}
        if CallbackBase is not None:  # which clears an inherited VLLM_CPU_KVCACHE_SPACE
            engine_kwargs["kv_cache_memory_bytes"] = int(options.cpu_kvcache_gib * 2**30)
        else:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, round(options.cpu_kvcache_gib)))
    bundle.update(options.custom_resources)
    extra: dict[str, Any] = {}
    if CallbackBase is not None:
        extra["callback_config"] = {"callback_class": "serving.model_apps:EngineInitCallback"}
    return LLMConfig(
        model_loading_config={"model_id": name, "model_source": path},
        engine_kwargs=engine_kwargs,
        placement_group_config={"bundles": [bundle]},
        deployment_config={
            "autoscaling_config": options.replicas.autoscaling(),
            # The replica only relays to its engine, which holds the bundle above.
            "ray_actor_options": {"num_cpus": 0.05},
        },
        runtime_env={"env_vars": env} if env else None,
        log_engine_metrics=False,
        **extra,
    )


def chat_app(name: str, path: str, options: ChatModelOptions) -> Application:
    """A Serve application running one vLLM `LLMServer` for a chat checkpoint."""
    from ray.serve.llm import build_llm_deployment

    return build_llm_deployment(llm_config(name, path, options))


def reward_app(name: str, path: str, options: RewardModelOptions) -> Application:
    """A Serve application scoring with one reward-model checkpoint."""
    from serving.reward_server import RewardModelServer

    deployment = serve.deployment(
        RewardModelServer,
        name=f"RewardModelServer:{name}",
        autoscaling_config=options.replicas.autoscaling(),
        ray_actor_options={
            "num_cpus": options.cpus_per_replica,
            "num_gpus": 1 if options.use_gpu else 0,
            "resources": options.custom_resources,
        },
        max_ongoing_requests=256,
    )
    return deployment.bind(
        path, max_batch_size=options.max_batch_size, batch_wait_s=options.batch_wait_timeout_s
    )


def entry_app(
    entry: RegistryEntry, chat: ChatModelOptions, reward: RewardModelOptions
) -> Application:
    """The application for a registry entry, by its kind."""
    if entry.kind == "chat":
        return chat_app(entry.name, entry.path, chat)
    if entry.kind == "reward":
        return reward_app(entry.name, entry.path, reward)
    raise ValueError(f"registry entry {entry.name!r} has unknown kind {entry.kind!r}")


# Builders for `serve deploy` configs (import_path + args), see serving.deploy.serve_config.
def build_chat_app(args: dict[str, Any]) -> Application:
    """`serving.model_apps:build_chat_app` with args {name, path, options}."""
    return chat_app(args["name"], args["path"], ChatModelOptions(**args.get("options", {})))


def build_reward_app(args: dict[str, Any]) -> Application:
    """`serving.model_apps:build_reward_app` with args {name, path, options}."""
    return reward_app(args["name"], args["path"], RewardModelOptions(**args.get("options", {})))
