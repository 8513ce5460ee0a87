"""Put a registry's checkpoints on Ray Serve, keep them in step with it, export the config.

- `start_endpoint` starts Serve's HTTP proxy and the ingress application.
- `publish` / `remove` add or delete one checkpoint's application; the others keep
  serving (and streaming) throughout.
- `RegistryWatch.sync` publishes what the registry gained and removes what it lost.
- `serve_config` is the same deployment as a Serve config for `serve deploy`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ray import serve
from ray.serve.schema import ApplicationStatus, ServeApplicationSchema, ServeDeploySchema

from rayalign import storage
from rayalign.registry import Registry, RegistryEntry
from serving.config import (
    API_KEY_ENV,
    ChatAppArgs,
    IngressAppArgs,
    IngressSettings,
    RewardAppArgs,
    ServingConfig,
)
from serving.ingress import ingress_app
from serving.model_apps import app_name, entry_app, parse_app_name

INGRESS_APP = "rayalign-ingress"


class ServeError(RuntimeError):
    """A model application that failed to deploy; the message names it and why."""


def start_endpoint(config: ServingConfig, wait: bool = True) -> None:
    """Start Serve's proxy on `config.host:port` and the ingress application at `/`
    (`wait`: until the ingress runs)."""
    serve.start(http_options={"host": config.host, "port": config.port})
    settings = IngressSettings(
        registry=config.registry, api_key=config.api_key, max_body_bytes=config.max_body_bytes
    )
    app = ingress_app(settings, num_cpus=config.ingress_cpus)
    serve.run_many(
        [serve.RunTarget(target=app, name=INGRESS_APP, route_prefix="/")],
        wait_for_applications_running=False,
    )
    if wait:
        wait_running([INGRESS_APP])


def served_models() -> dict[str, str]:
    """{model name: kind} of the model applications Serve knows, in any state."""
    apps = serve.status().applications
    return {p[1]: p[0] for p in map(parse_app_name, apps) if p}


def deploy_failures() -> dict[str, str]:
    """{model name: Serve's message} of our model applications that failed to deploy."""
    apps = serve.status().applications
    return {
        p[1]: state.message
        for app, state in apps.items()
        if (p := parse_app_name(app)) and state.status == ApplicationStatus.DEPLOY_FAILED
    }


def wait_running(apps: list[str], timeout_s: float = 600.0) -> None:
    """Block until every application in `apps` runs.

    Raises:
        ServeError: an application failed to deploy (naming it and Serve's message), or
            `timeout_s` passed.
    """
    deadline = time.monotonic() + timeout_s
    pending = set(apps)
    while pending:
        statuses = serve.status().applications
        for app in list(pending):
            state = statuses.get(app)
            if state is None:
                continue
            if state.status == ApplicationStatus.RUNNING:
                pending.discard(app)
            elif state.status == ApplicationStatus.DEPLOY_FAILED:
                raise ServeError(f"application {app!r} failed to deploy: {state.message}")
        if pending and time.monotonic() > deadline:
            raise ServeError(f"applications not running after {timeout_s:.0f}s: {sorted(pending)}")
        if pending:
            time.sleep(0.5)


def publish(entries: list[RegistryEntry], config: ServingConfig, wait: bool = True) -> list[str]:
    """Deploy one application per entry (replacing one of the same name). Returns the
    application names."""
    targets = [
        serve.RunTarget(
            target=entry_app(e, config.chat, config.reward),
            name=app_name(e.kind, e.name),
            route_prefix=None,
        )
        for e in entries
    ]
    if not targets:
        return []
    serve.run_many(targets, wait_for_applications_running=False)
    names = [t.name for t in targets]
    if wait:
        wait_running(names)
    return names


def remove(name: str) -> bool:
    """Delete model `name`'s application. Returns whether it was served."""
    kind = served_models().get(name)
    if kind is None:
        return False
    serve.delete(app_name(kind, name))
    return True


def selected(config: ServingConfig, missing_ok: bool = False) -> dict[str, RegistryEntry]:
    """The registry entries `config` serves (all, or those named in `config.models`;
    `missing_ok`: those of them registered so far)."""
    entries = Registry(config.registry).entries()
    if config.models is None:
        return entries
    unknown = sorted(set(config.models) - set(entries))
    if unknown and not missing_ok:
        raise ValueError(
            f"models {unknown} are not in the registry {storage.join(config.registry, 'registry')}; "
            f"registered: {', '.join(sorted(entries)) or 'none'}"
        )
    return {n: entries[n] for n in config.models if n in entries}


@dataclass
class RegistryWatch:
    """Keeps the served models equal to the registry's entries (as selected by config)."""

    config: ServingConfig
    published: dict[str, str] = field(default_factory=dict)  # name -> checkpoint path
    # Models named in config.models but not registered yet are left for a later sync.
    missing_ok: bool = False

    def sync(self, wait: bool = True) -> tuple[list[str], list[str]]:
        """Publish new or re-registered entries, remove deleted ones. Returns (added, removed)."""
        wanted = selected(self.config, self.missing_ok)
        served = served_models()
        fresh = [
            e
            for n, e in sorted(wanted.items())
            if n not in served or self.published.get(n, e.path) != e.path
        ]
        gone = sorted(set(served) - set(wanted))
        for name in gone:
            remove(name)
            self.published.pop(name, None)
        publish(fresh, self.config, wait=wait)
        for e in fresh:
            self.published[e.name] = e.path
        for n in wanted:
            self.published.setdefault(n, wanted[n].path)
        return [e.name for e in fresh], gone


def serve_config(config: ServingConfig) -> dict[str, Any]:
    """A Serve config (for `serve deploy`) serving `config`'s checkpoints.

    Every model is its own application with its own autoscaling and resources; edit one
    and redeploy, and Serve touches only that application. The API key is read from the
    ${API_KEY_ENV} environment variable of the ingress, never written into the file.
    """
    ingress_args = IngressAppArgs(
        registry=storage.resolve(config.registry),
        api_key_env=API_KEY_ENV,
        max_body_bytes=config.max_body_bytes,
        num_cpus=config.ingress_cpus,
    )
    apps = [
        ServeApplicationSchema(
            name=INGRESS_APP,
            route_prefix="/",
            import_path="serving.ingress:build_ingress_app",
            # The ingress's replica bounds stay at their defaults unless edited in.
            args=ingress_args.model_dump(mode="json", exclude={"min_replicas", "max_replicas"}),
        )
    ]
    for name, entry in sorted(selected(config).items()):
        if entry.kind == "chat":
            builder = "build_chat_app"
            args = ChatAppArgs(name=name, path=entry.path, options=config.chat)
        else:
            builder = "build_reward_app"
            args = RewardAppArgs(name=name, path=entry.path, options=config.reward)
        apps.append(
            ServeApplicationSchema(
                name=app_name(entry.kind, name),
                route_prefix=None,  # reached through the ingress only
                import_path=f"serving.model_apps:{builder}",
                args=args.model_dump(mode="json"),
            )
        )
    deploy = ServeDeploySchema(
        proxy_location="EveryNode",
        http_options={"host": config.host, "port": config.port},
        applications=apps,
    )
    return deploy.model_dump(mode="json", exclude_unset=True)
