"""`rayalign serve`: run the endpoint for a registry until Ctrl-C, publishing as it goes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import ray
from ray import serve

from rayalign.cluster import init_ray
from rayalign.interrupts import stop_on_signals
from serving.config import ServingConfig, check_exposure
from serving.deploy import (
    INGRESS_APP,
    RegistryWatch,
    ServeError,
    selected,
    start_endpoint,
    wait_running,
)
from serving.model_apps import app_name

log = logging.getLogger(__name__)

# Logical CPUs a local cluster declares beyond the models it starts with, so checkpoints
# published later can be scheduled (Ray counts CPUs logically; cores are shared).
_HEADROOM_MODELS = 6


def connect(address: str | None, models: int, config: ServingConfig) -> None:
    """Attach to `address` (or RAY_ADDRESS / a `ray start` cluster), else start a local
    cluster sized for `models` models plus headroom."""
    per_model = max(config.chat.cpus_per_replica, config.reward.cpus_per_replica) + 0.1
    need = config.ingress_cpus + per_model * (models + _HEADROOM_MODELS)
    init_ray(need, address=address, log_to_driver=False)


def base_url(config: ServingConfig) -> str:
    """The endpoint's URL as a client on this machine reaches it."""
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    return f"http://{host}:{config.port}"


def log_usage(config: ServingConfig, names: list[str]) -> None:
    """Where the endpoint answers, what it serves, and a first command to try."""
    url = base_url(config)
    auth = ' -H "Authorization: Bearer $RAYALIGN_API_KEY"' if config.api_key else ""
    log.info("[serve] endpoint %s/v1  playground %s/", url, url)
    log.info("[serve] models: %s", ", ".join(names) or "none yet")
    log.info("[serve] try: curl -s %s/v1/models%s", url, auth)


def serve_until_interrupted(
    config: ServingConfig,
    watch: RegistryWatch,
    on_ready: Callable[[], None] | None = None,
    stop_serve: bool = True,
) -> None:
    """Publish what the registry holds and `watch` has not, wait until every model (and
    the ingress) runs, then follow the registry (when `config.watch_interval_s` is set)
    until Ctrl-C or SIGTERM (KeyboardInterrupt reaches the caller: the CLI exits 130 or
    143); always disconnect the driver at the end, and shut Serve down unless
    `stop_serve` is False (the caller stops the whole cluster anyway)."""

    # Also while a deployment is being waited on: Ctrl-C never waits for engines.
    with stop_on_signals():
        try:
            wanted = selected(config)
            log.info("[serve] serving %d checkpoint(s): %s", len(wanted), ", ".join(wanted))
            started = time.monotonic()
            watch.sync(wait=False)
            wait_running([INGRESS_APP, *(app_name(e.kind, n) for n, e in wanted.items())])
            log.info("[serve] ready in %.0fs", time.monotonic() - started)
            log_usage(config, sorted(watch.published))
            if on_ready:
                on_ready()
            while True:
                time.sleep(config.watch_interval_s or 1.0)
                if config.watch_interval_s:
                    try:
                        added, removed = watch.sync()
                    except (ServeError, ValueError) as err:
                        log.warning("[serve] registry change not applied: %s", err)
                        continue
                    if added or removed:
                        log.info("[serve] published %s, removed %s", added or "-", removed or "-")
        finally:
            shutdown(stop_serve)


def shutdown(stop_serve: bool = True) -> None:
    """Delete every Serve application (graceful: up to 30 s) and disconnect the driver."""
    log.info("[serve] shutting down")
    if stop_serve:
        serve.shutdown()
    ray.shutdown()


def run_endpoint(
    config: ServingConfig, address: str | None = None, on_ready: Callable[[], None] | None = None
) -> None:
    """Start the endpoint with the registry's checkpoints and keep it in step with the
    registry (when `config.watch_interval_s` is set) until interrupted; then shut down.
    `on_ready` runs once every model serves."""
    check_exposure(config)
    connect(address, len(selected(config)), config)
    log.info("[serve] starting the ingress on %s:%s", config.host, config.port)
    try:
        start_endpoint(config, wait=False)  # the ingress starts beside the models
    except BaseException:
        shutdown()
        raise
    serve_until_interrupted(config, RegistryWatch(config), on_ready)
