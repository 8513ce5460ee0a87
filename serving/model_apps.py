"""One Serve application per served checkpoint.

Each registered checkpoint runs as its own Serve application, named by its kind and
registry name (`rayalign-chat-sft`, `rayalign-reward-rm`). Publishing a checkpoint adds
an application and removing one deletes it; Serve leaves every other application, and
the requests streaming from it, untouched. The ingress finds the models by these names.

Chat checkpoints run in `ray.serve.llm`'s `LLMServer` (vLLM); reward models run in
`RewardModelServer` (transformers, batched).
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.deployment import Application
from ray.serve.llm import LLMConfig, ModelLoadingConfig, build_llm_deployment

from rayalign.registry import Kind, RegistryEntry
from serving.config import ChatAppArgs, ChatModelOptions, RewardAppArgs, RewardModelOptions
from serving.ray_llm_adapter import IN_PROCESS_WORKER_ENV, engine_init_callback
from serving.reward_server import RewardModelServer

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


def llm_config(name: str, path: str, options: ChatModelOptions) -> LLMConfig:
    """The `ray.serve.llm.LLMConfig` serving checkpoint `path` as model `name`."""
    engine_kwargs: dict[str, Any] = {"dtype": options.dtype, "enforce_eager": options.enforce_eager}
    if options.max_model_len:
        engine_kwargs["max_model_len"] = options.max_model_len
    if options.use_gpu:
        engine_kwargs["gpu_memory_utilization"] = options.gpu_memory_utilization
        bundle = {"CPU": options.cpus_per_replica, "GPU": 1}
        env = {}
    else:
        bundle = {"CPU": options.cpus_per_replica, "GPU": 0}
        # Engines that share cores must not pin OpenMP threads to the same ones, nor spin
        # them between kernels: a spinning engine takes the cores the proxy, the ingress
        # and the other engines need (bench/NOTES.md, the soak).
        env = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_WAIT_POLICY": "passive"}
        env[IN_PROCESS_WORKER_ENV] = "0"  # vLLM's worker in the engine core's process
        # In bytes, unlike VLLM_CPU_KVCACHE_SPACE (whole GiB), which the engine init
        # callback clears from the replica's environment so that this one counts.
        engine_kwargs["kv_cache_memory_bytes"] = int(options.cpu_kvcache_gib * 2**30)
    bundle.update(options.custom_resources)
    return LLMConfig(
        model_loading_config=ModelLoadingConfig(model_id=name, model_source=path),
        engine_kwargs=engine_kwargs,
        placement_group_config={"bundles": [bundle]},
        deployment_config={
            "autoscaling_config": options.replicas.autoscaling().model_dump(exclude_unset=True),
            # The replica only relays to its engine, which holds the bundle above.
            "ray_actor_options": {"num_cpus": 0.05},
        },
        runtime_env={"env_vars": env} if env else None,
        log_engine_metrics=False,
        callback_config=engine_init_callback(),
    )


def chat_app(name: str, path: str, options: ChatModelOptions) -> Application:
    """A Serve application running one vLLM `LLMServer` for a chat checkpoint."""
    return build_llm_deployment(llm_config(name, path, options))


def reward_app(name: str, path: str, options: RewardModelOptions) -> Application:
    """A Serve application scoring with one reward-model checkpoint."""
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
    return deployment.bind(path, options)


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
# Serve validates args into the annotated model only when the annotation is a class, not
# the string that postponed annotations make of it: each builder validates them itself.
def build_chat_app(args: ChatAppArgs) -> Application:
    """`serving.model_apps:build_chat_app`: args are a `ChatAppArgs`."""
    args = ChatAppArgs.model_validate(args)
    return chat_app(args.name, args.path, args.options)


def build_reward_app(args: RewardAppArgs) -> Application:
    """`serving.model_apps:build_reward_app`: args are a `RewardAppArgs`."""
    args = RewardAppArgs.model_validate(args)
    return reward_app(args.name, args.path, args.options)
