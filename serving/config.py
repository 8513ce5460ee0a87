"""Typed configuration of the Serve app: the endpoint, and how each checkpoint is served.

`rayalign serve` builds a `ServingConfig` from its flags (or a YAML file plus `key=value`
overrides, like every stage); `rayalign serve --print-config` turns it into the Serve
config YAML that `serve deploy` takes on a cluster. The `*Args` and `*Settings` models
at the end are what crosses into Serve: the arguments of the application builders that
such a config names, and the constructor arguments of the deployments.
"""

from __future__ import annotations

from pydantic import Field, model_validator
from ray.serve.config import AutoscalingConfig

from rayalign.config import Strict

API_KEY_ENV = "RAYALIGN_API_KEY"


class ReplicaOptions(Strict):
    min_replicas: int = Field(1, ge=0, description="Replicas kept when idle (0 scales to zero).")
    max_replicas: int = Field(1, ge=1, description="Replicas the autoscaler may grow to.")
    target_ongoing_requests: int = Field(
        16, ge=1, description="Requests in flight per replica the autoscaler aims for."
    )

    @model_validator(mode="after")
    def _ordered(self) -> ReplicaOptions:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})"
            )
        return self

    def autoscaling(self) -> AutoscalingConfig:
        """Serve's `autoscaling_config` for these bounds."""
        return AutoscalingConfig(
            min_replicas=self.min_replicas,
            initial_replicas=max(self.min_replicas, 1),
            max_replicas=self.max_replicas,
            target_ongoing_requests=self.target_ongoing_requests,
        )


class ChatModelOptions(Strict):
    """How each chat checkpoint is served (one vLLM engine per replica)."""

    replicas: ReplicaOptions = Field(default_factory=ReplicaOptions, description="Autoscaling.")
    use_gpu: bool = Field(False, description="One GPU per replica (CUDA vLLM); CPU otherwise.")
    cpus_per_replica: float = Field(
        1.0, gt=0, description="Logical CPUs reserved for each replica's engine."
    )
    custom_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources per replica, e.g. {rollout: 1} for GPU serving nodes.",
    )
    max_model_len: int | None = Field(
        None, ge=16, description="Context length; None takes the model's own."
    )
    dtype: str = Field("auto", description="Weights dtype for vLLM (auto, float32, bfloat16...).")
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="Fraction of GPU memory vLLM may take (GPU only)."
    )
    cpu_kvcache_gib: float = Field(
        1.0,
        gt=0,
        description="KV cache in host memory per replica, GiB (CPU only; 0.25 holds ~65k "
        "tokens of the small model).",
    )
    enforce_eager: bool = Field(
        True, description="Skip CUDA graphs/compilation: faster start, needed on CPU."
    )


class RewardModelOptions(Strict):
    """How each reward-model checkpoint is served (transformers, batched)."""

    replicas: ReplicaOptions = Field(default_factory=ReplicaOptions, description="Autoscaling.")
    use_gpu: bool = Field(False, description="One GPU per replica.")
    cpus_per_replica: float = Field(1.0, gt=0, description="Logical CPUs per replica.")
    custom_resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources per replica."
    )
    max_batch_size: int = Field(32, ge=1, description="Pairs scored in one forward pass.")
    batch_wait_timeout_s: float = Field(
        0.01, ge=0, description="How long a batch waits to fill before it runs."
    )


class ServingConfig(Strict):
    """The endpoint and the checkpoints it serves (`rayalign serve`)."""

    registry: str = Field(
        description="Storage path holding the run registry (its registry/ folder)."
    )
    host: str = Field(
        "127.0.0.1", description="Address to bind; 127.0.0.1 keeps the endpoint on this machine."
    )
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of the endpoint.")
    api_key: str | None = Field(
        None,
        description=(
            f"Bearer key every route needs (401 without it). Defaults to ${API_KEY_ENV}; "
            "unset means no auth."
        ),
    )
    allow_no_api_key: bool = Field(
        False,
        description=(
            "Serve on a non-loopback host without an API key anyway (anyone who reaches the "
            "port may use every model). Without it, such a start is refused."
        ),
    )
    models: list[str] | None = Field(
        None, description="Registry names to serve; None serves every registered checkpoint."
    )
    watch_interval_s: float | None = Field(
        2.0,
        gt=0,
        description=(
            "Seconds between registry checks that publish new checkpoints and remove deleted "
            "ones; None turns the watch off."
        ),
    )
    max_body_bytes: int = Field(
        1 << 20, ge=1024, description="Largest request body accepted (413 beyond)."
    )
    ingress_cpus: float = Field(0.1, gt=0, description="Logical CPUs of each ingress replica.")
    chat: ChatModelOptions = Field(default_factory=ChatModelOptions, description="Chat models.")
    reward: RewardModelOptions = Field(
        default_factory=RewardModelOptions, description="Reward models."
    )


# What crosses into Serve ---------------------------------------------------------------

DEFAULT_MAX_BODY_BYTES = 1 << 20
_MAX_BODY = "Largest request body accepted, bytes (413 beyond)."


class IngressSettings(Strict):
    """Constructor arguments of each ingress replica."""

    registry: str | None = Field(
        None, description="Absolute run directory whose registry describes the models; None: none."
    )
    api_key: str | None = Field(
        None, description="Bearer key every API route needs; None: no auth."
    )
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024, description=_MAX_BODY)


class IngressAppArgs(Strict):
    """Args of `serving.ingress:build_ingress_app` in a Serve config (`serve deploy`)."""

    registry: str | None = Field(
        None, description="Storage path holding the run registry, as the cluster sees it."
    )
    api_key_env: str | None = Field(
        None,
        description="Environment variable holding the API key on the cluster (the key itself "
        "never goes into a config file); None: no auth.",
    )
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024, description=_MAX_BODY)
    num_cpus: float = Field(0.1, gt=0, description="Logical CPUs of each ingress replica.")
    min_replicas: int = Field(1, ge=0, description="Ingress replicas kept when idle.")
    max_replicas: int = Field(1, ge=1, description="Ingress replicas the autoscaler may grow to.")


class ChatAppArgs(Strict):
    """Args of `serving.model_apps:build_chat_app` in a Serve config."""

    name: str = Field(description="Served model name (its registry name).")
    path: str = Field(description="Checkpoint directory (self-contained HF model).")
    options: ChatModelOptions = Field(
        default_factory=ChatModelOptions, description="How the checkpoint is served."
    )


class RewardAppArgs(Strict):
    """Args of `serving.model_apps:build_reward_app` in a Serve config."""

    name: str = Field(description="Served model name (its registry name).")
    path: str = Field(description="Reward-model checkpoint directory.")
    options: RewardModelOptions = Field(
        default_factory=RewardModelOptions, description="How the checkpoint is served."
    )


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_exposure(config: ServingConfig) -> None:
    """Refuse an endpoint that others can reach and that asks for no key, unless the
    config accepts the risk (`allow_no_api_key`). Runs before anything starts."""
    if is_loopback(config.host) or config.api_key or config.allow_no_api_key:
        return
    raise ValueError(
        f"serving on host {config.host!r} without an API key would let anyone who reaches "
        f"port {config.port} use every model: set --api-key (or ${API_KEY_ENV}), bind "
        "127.0.0.1, or pass --insecure-no-api-key to accept that"
    )
