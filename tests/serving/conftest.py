"""A live endpoint for the serving tests: the random `small` base model, its SFT checkpoint
and the trained reward model behind one Serve app on a free loopback port, with an API key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from rayalign.cluster import free_port

API_KEY = "test-key-123"


@dataclass
class Endpoint:
    url: str
    registry: Path
    config: object  # serving.config.ServingConfig

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


def register_tiny(registry: Path, name: str, seed: int) -> Path:
    """A tiny random chat checkpoint (weights set by `seed`) registered as `name`."""
    from rayalign.models.factory import init_model
    from rayalign.registry import Registry, RegistryEntry

    path = init_model("tiny", registry / "models" / name, seed=seed)
    Registry(registry).register(
        RegistryEntry(name=name, stage="base", kind="chat", path=str(path.resolve()))
    )
    return path


# One endpoint for the whole package (the API tests and the playground): seven vLLM engine
# start-ups cost minutes on two cores. Tests that publish or remove models undo it.
@pytest.fixture(scope="package")
def endpoint(ray_local, small_model, sft_entry, rm_entry, tmp_path_factory):
    from ray import serve

    from rayalign.registry import Registry, RegistryEntry
    from serving.config import ServingConfig
    from serving.deploy import INGRESS_APP, RegistryWatch, start_endpoint, wait_running

    registry = tmp_path_factory.mktemp("serving-registry")
    Registry(registry).register(
        RegistryEntry(name="base", stage="base", kind="chat", path=str(small_model.resolve()))
    )
    for entry in (sft_entry, rm_entry):
        Registry(registry).register(entry)
    config = ServingConfig(
        registry=str(registry),
        port=free_port(),
        api_key=API_KEY,
        max_body_bytes=64 * 1024,
        chat={"max_model_len": 256},
        watch_interval_s=None,
    )
    start_endpoint(config, wait=False)  # the ingress starts beside the engines
    RegistryWatch(config).sync()
    wait_running([INGRESS_APP])
    yield Endpoint(url=f"http://127.0.0.1:{config.port}", registry=registry, config=config)
    serve.shutdown()


@pytest.fixture
def client(endpoint):
    import openai

    return openai.OpenAI(base_url=endpoint.base_url, api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture
def http(endpoint):
    import httpx

    with httpx.Client(
        base_url=endpoint.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120
    ) as c:
        yield c
