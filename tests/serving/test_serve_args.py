"""What crosses into Serve, without starting it: the typed builder args of `serve deploy`
configs, status handling by enum, and the one module that touches Ray's private API."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError
from ray.serve.schema import ApplicationStatus, ServeDeploySchema

from rayalign.registry import Registry, RegistryEntry
from serving import deploy
from serving.config import (
    ChatAppArgs,
    ChatModelOptions,
    IngressAppArgs,
    IngressSettings,
    ReplicaOptions,
    RewardAppArgs,
    RewardModelOptions,
    ServingConfig,
)

ROOT = Path(__file__).resolve().parents[2]
TYPED = (
    ServingConfig,
    ReplicaOptions,
    ChatModelOptions,
    RewardModelOptions,
    IngressSettings,
    IngressAppArgs,
    ChatAppArgs,
    RewardAppArgs,
)


@pytest.fixture
def config(tmp_path) -> ServingConfig:
    registry = Registry(tmp_path)
    registry.register(RegistryEntry("base", "base", "chat", "/ckpt/base"))
    registry.register(RegistryEntry("rm", "reward_model", "reward", "/ckpt/rm"))
    return ServingConfig(registry=str(tmp_path), chat={"max_model_len": 128})


def test_every_field_has_a_description():
    for model in TYPED:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


def test_serve_config_args_are_the_typed_builder_args(config):
    body = deploy.serve_config(config)
    ServeDeploySchema.model_validate(body)
    apps = {a["name"]: a for a in body["applications"]}
    assert set(apps) == {"rayalign-ingress", "rayalign-chat-base", "rayalign-reward-rm"}
    ingress = IngressAppArgs.model_validate(apps["rayalign-ingress"]["args"])
    assert ingress.api_key_env == "RAYALIGN_API_KEY" and ingress.registry == config.registry
    chat = ChatAppArgs.model_validate(apps["rayalign-chat-base"]["args"])
    assert chat.options == config.chat and chat.path == "/ckpt/base"
    reward = RewardAppArgs.model_validate(apps["rayalign-reward-rm"]["args"])
    assert reward.options == config.reward
    assert apps["rayalign-chat-base"]["route_prefix"] is None


def test_builder_args_reject_unknown_keys_naming_them():
    with pytest.raises(ValidationError, match="replica"):
        ChatAppArgs.model_validate({"name": "a", "path": "/p", "replica": 2})
    with pytest.raises(ValidationError, match="options.replicas.max_replicas"):
        RewardAppArgs.model_validate(
            {"name": "a", "path": "/p", "options": {"replicas": {"max_replicas": 0}}}
        )
    with pytest.raises(ValidationError, match="api_key"):
        IngressAppArgs.model_validate({"api_key": "secret"})  # only its env var's name


def test_ingress_builder_takes_the_key_from_the_environment(monkeypatch, tmp_path):
    from serving.ingress import build_ingress_app

    monkeypatch.setenv("MY_KEY", "secret")
    app = build_ingress_app({"registry": str(tmp_path), "api_key_env": "MY_KEY"})
    (settings,) = app._bound_deployment.init_args
    assert settings == IngressSettings(registry=str(tmp_path), api_key="secret")
    (settings,) = build_ingress_app({})._bound_deployment.init_args
    assert settings.api_key is None


def _status(**apps: tuple[ApplicationStatus, str]):
    states = {
        name: SimpleNamespace(status=status, message=message)
        for name, (status, message) in apps.items()
    }
    return lambda: SimpleNamespace(applications=states)


def test_statuses_are_compared_as_enums(monkeypatch):
    monkeypatch.setattr(
        deploy.serve,
        "status",
        _status(
            **{
                "rayalign-chat-a": (ApplicationStatus.RUNNING, ""),
                "rayalign-chat-b": (ApplicationStatus.DEPLOY_FAILED, "no GPU"),
                "rayalign-reward-c": (ApplicationStatus.DEPLOYING, ""),
                "other": (ApplicationStatus.DEPLOY_FAILED, "not ours"),
            }
        ),
    )
    assert deploy.deploy_failures() == {"b": "no GPU"}
    assert deploy.served_models() == {"a": "chat", "b": "chat", "c": "reward"}
    deploy.wait_running(["rayalign-chat-a"])
    with pytest.raises(deploy.ServeError, match="'rayalign-chat-b' failed to deploy: no GPU"):
        deploy.wait_running(["rayalign-chat-a", "rayalign-chat-b"])
    with pytest.raises(deploy.ServeError, match="not running after 0s"):
        deploy.wait_running(["rayalign-reward-c"], timeout_s=0)


def test_only_the_adapter_imports_ray_private_llm_modules():
    private = re.compile(r"^\s*(from|import)\s+ray\.llm\._internal", re.MULTILINE)
    users = [
        str(path.relative_to(ROOT))
        for folder in ("rayalign", "actors", "serving", "pipelines", "bench", "tests")
        for path in (ROOT / folder).rglob("*.py")
        if private.search(path.read_text())
    ]
    assert users == ["serving/ray_llm_adapter.py"]


def test_chat_builder_makes_the_llm_config_with_rayaligns_engine_callback(ray_local):
    import importlib

    from serving.model_apps import build_chat_app
    from serving.ray_llm_adapter import CallbackBase, EngineInitCallback

    args = {"name": "sft", "path": "/ckpt/sft", "options": {"cpu_kvcache_gib": 0.25}}
    llm = build_chat_app(args)._bound_deployment.init_kwargs["llm_config"]
    assert llm.model_id == "sft" and llm.model_loading_config.model_source == "/ckpt/sft"
    assert llm.engine_kwargs["kv_cache_memory_bytes"] == 2**28
    assert llm.deployment_config["autoscaling_config"]["max_replicas"] == 1
    module, _, cls = llm.callback_config.callback_class.partition(":")
    callback = getattr(importlib.import_module(module), cls)  # as the replica loads it
    assert callback is EngineInitCallback and issubclass(callback, CallbackBase)


@pytest.mark.parametrize(
    ("host", "key", "allow", "refused"),
    [
        ("127.0.0.1", None, False, False),
        ("localhost", None, False, False),
        ("::1", None, False, False),
        ("0.0.0.0", None, False, True),
        ("10.1.2.3", None, False, True),
        ("my-node.internal", None, False, True),
        ("0.0.0.0", "k3y", False, False),
        ("0.0.0.0", None, True, False),
    ],
)
def test_an_open_host_needs_a_key_or_an_explicit_risk(tmp_path, host, key, allow, refused):
    from serving.config import check_exposure

    config = ServingConfig(registry=str(tmp_path), host=host, api_key=key, allow_no_api_key=allow)
    if refused:
        with pytest.raises(ValueError, match="without an API key.*--insecure-no-api-key"):
            check_exposure(config)
    else:
        check_exposure(config)


def test_serve_cli_refuses_an_open_host_before_starting_anything(tmp_path, capsys, monkeypatch):
    from pipelines.cli import main
    from serving import endpoint

    def connect(*_, **__):
        raise AssertionError("the endpoint connected to Ray before refusing the host")

    monkeypatch.setattr(endpoint, "connect", connect)
    monkeypatch.delenv("RAYALIGN_API_KEY", raising=False)
    Registry(tmp_path).register(RegistryEntry("base", "base", "chat", "/ckpt/base"))
    assert main(["serve", "--registry", str(tmp_path), "--host", "0.0.0.0"]) == 2
    assert "without an API key" in capsys.readouterr().err


def test_a_cpu_replica_asks_vllm_for_its_in_process_worker(tiny_model, monkeypatch):
    """A CPU chat app's replica environment turns the worker in process on, and the engine
    init callback then asks vLLM for its in-process executor (ray.serve.llm alone asks for
    the multiprocessing one, one more spawned process per engine); unset, nothing changes."""
    import asyncio

    from serving.config import ChatModelOptions
    from serving.model_apps import llm_config
    from serving.ray_llm_adapter import IN_PROCESS_WORKER_ENV, EngineInitCallback

    def backend(env_value: str | None) -> str:
        config = llm_config("m", str(tiny_model), ChatModelOptions())
        if env_value is None:
            monkeypatch.delenv(IN_PROCESS_WORKER_ENV, raising=False)
        else:
            monkeypatch.setenv(IN_PROCESS_WORKER_ENV, env_value)
        asyncio.run(EngineInitCallback(config).on_before_node_init())
        return config.get_engine_config().get_initialization_kwargs()[
            "distributed_executor_backend"
        ]

    env = llm_config("m", str(tiny_model), ChatModelOptions()).runtime_env["env_vars"]
    assert env[IN_PROCESS_WORKER_ENV] == "0"
    assert backend(env[IN_PROCESS_WORKER_ENV]) == "uni"
    assert backend(None) == "mp"
