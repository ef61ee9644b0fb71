"""The service kit: a service declares what it is, and the kit builds the rest.

A service is a ``ServiceSpec``: its settings class, its metrics class, the events it publishes,
its subscriptions (event, consumer group, handler, batch or single) and ``wire`` — its one
composition root, which builds the service's objects from a ``Kit`` (settings, metrics, the
bus, the MongoDB database, the object store, the registry client, the outbox) without any I/O
and returns a ``Wiring``: the context handed to every handler, the HTTP routers, the resources
to start, ping and stop, the background tasks and the outbox stores.

From a spec, ``build_app`` makes the ASGI app (FastAPI through the platform's HTTP shell), its
lifespan (resources started in order, then the consumer groups, then the tasks; stopped in
reverse), its readiness (every resource's ping), the consumer groups on the bus and the
``__main__`` (``run_service``); ``asyncapi.document_for(spec)`` makes its AsyncAPI document.
The bus refuses to publish an event the spec does not declare, so the document covers what the
service sends, and the subscriptions it receives are the spec's own.

Services register their spec under the ``modelbus.services`` entry point group, which is how
``python -m modelbus_platform.asyncapi`` finds them without the platform importing services.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Literal, TypeVar

import structlog
from fastapi import APIRouter, FastAPI
from pymongo.asynchronous.database import AsyncDatabase

from modelbus_contracts import Event

from .artifacts import AllowPickle, ArtifactTrust, pickle_policy
from .auth import ApiKeys, Authenticator, AuthMiddleware, MongoKeyStore, build_authenticator
from .bus import EventBus, MemoryProcessedEvents
from .http import ServiceApp, create_app
from .logging import configure_logging
from .metrics import Metrics
from .offsets import StateOffsets
from .outbox import OutboxStore, Relay
from .policies import Policies
from .registry import Registry, RegistryClient
from .runtime import run
from .settings import ServiceSettings
from .stores import (
    MongoProcessedEvents,
    ObjectStore,
    build_object_store,
    connect_mongo,
    mongo_ping,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")
ENTRY_POINT_GROUP = "modelbus.services"
INSTANCE_PLACEHOLDER = "{instance}"

Handler = Callable[[Any, Any], Awaitable[None]]


@dataclass(frozen=True)
class Subscription:
    """``handler(context, event)`` (or ``handler(context, events)`` for a batch subscription)
    for ``event`` in consumer ``group``. The group may name settings fields, e.g.
    ``"scorer-control-{instance_id}"`` (one group per replica) or ``"{consumer_group}"``."""

    event: type[Event]
    group: str
    handler: Handler
    batch: bool = False
    dedupe: bool = True
    offset_reset: Literal["earliest", "latest"] = "earliest"
    columns: bool = False  # a batch as the contract's columns (``Columns[event]``), not events
    # the handler keeps state in memory: offsets are committed by the service as far as its
    # checkpoint covers (``Kit.offsets``), never after each batch (batch subscriptions only)
    checkpointed: bool = False

    def group_for(self, settings: ServiceSettings) -> str:
        return self.group.format_map(_SettingsFields(settings))

    def documented_group(self, settings_cls: type[ServiceSettings]) -> str:
        """The group as the AsyncAPI document shows it: settings defaults, ``{instance}`` for a
        per-replica part."""
        return self.group.format_map(_Defaults(settings_cls))


class _SettingsFields(dict[str, Any]):
    def __init__(self, settings: ServiceSettings) -> None:
        super().__init__()
        self.settings = settings

    def __missing__(self, key: str) -> Any:
        return getattr(self.settings, key)


class _Defaults(dict[str, Any]):
    def __init__(self, settings_cls: type[ServiceSettings]) -> None:
        super().__init__()
        self.settings_cls = settings_cls

    def __missing__(self, key: str) -> Any:
        if key == "instance_id":
            return INSTANCE_PLACEHOLDER
        return self.settings_cls.model_fields[key].default


@dataclass(frozen=True)
class Resource:
    """Something the service starts, checks and stops (a store, a client, a warm state).
    ``ping`` answers readiness; a resource without one is not part of it."""

    name: str
    start: Callable[[], Awaitable[Any]] | None = None
    stop: Callable[[], Awaitable[Any]] | None = None
    ping: Callable[[], Awaitable[bool]] | None = None


@dataclass(frozen=True)
class Task:
    """A background task, started after the consumer groups and stopped before them:
    ``stop`` for a graceful end (e.g. flush), else the task is cancelled."""

    name: str
    run: Callable[[], Awaitable[Any]]
    stop: Callable[[], Awaitable[Any]] | None = None


TASK_STOP_TIMEOUT_S = 15.0


@dataclass
class Wiring:
    """What a service's composition root builds."""

    context: Any
    routers: list[APIRouter] = field(default_factory=list)
    resources: list[Resource] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)
    configure_app: Callable[[ServiceApp], None] | None = None
    ungated: tuple[str, ...] = ()  # routes that answer before the service has started


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    title: str
    description: str
    settings: type[ServiceSettings]
    wire: Callable[[Kit], Wiring]
    publishes: tuple[type[Event], ...] = ()
    subscriptions: tuple[Subscription, ...] = ()
    metrics: type[Metrics] = Metrics


class Kit:
    """What a composition root builds from: settings, metrics, the bus and shared resources.

    Resources are made on first use and registered for the lifespan (started in the order
    they were asked for, before the service's own). ``override(name, default)`` lets tests
    hand in a fake for any named part (``build_app(settings, store=MemoryObjectStore())``).
    """

    def __init__(
        self, spec: ServiceSpec, settings: ServiceSettings, overrides: Mapping[str, Any]
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.metrics = spec.metrics(settings.service_name)
        self.overrides = dict(overrides)
        self.resources: list[Resource] = []
        self.bus = EventBus.from_settings(
            settings,
            metrics=self.metrics,
            processed=MemoryProcessedEvents(),
            publishes=[cls.topic for cls in spec.publishes],
        )
        self._made: dict[str, Any] = {}
        self.relay: Relay | None = None
        self.lifecycle: Lifecycle | None = None

    async def readiness(self) -> dict[str, bool]:
        """The service's readiness checks (what ``/health/ready`` answers)."""
        if self.lifecycle is None:
            return {"bus": False}
        return await self.lifecycle.readiness()

    def override(self, name: str, default: Callable[[], T]) -> T:
        """The test's replacement for ``name`` if one was given, else ``default()``."""
        if name in self.overrides:
            return self.overrides[name]
        return default()

    def once(self, name: str, make: Callable[[], T]) -> T:
        if name not in self._made:
            self._made[name] = self.override(name, make)
        return self._made[name]

    def mongo(self) -> AsyncDatabase:
        """The service's MongoDB database (one client); the bus's idempotency ledger lives
        there too."""

        def make() -> AsyncDatabase:
            client, db = connect_mongo(self.settings)
            processed = MongoProcessedEvents(db)
            self.bus.processed = processed
            self.resources.append(
                Resource(
                    "mongo",
                    start=processed.init,
                    stop=client.close,
                    ping=functools.partial(mongo_ping, db),
                )
            )
            return db

        return self.once("mongo", make)

    def object_store(self) -> ObjectStore:
        if "store" not in self._made:
            store = self.once("store", lambda: build_object_store(self.settings))
            self.resources.append(Resource("object_store", ping=store.ping))
        return self._made["store"]

    def registry(self) -> Registry:
        """The registry's HTTP API (``registry_url``); tests hand in a ``registry`` or a
        ``registry_transport``."""

        if "registry" not in self._made:
            registry = self.once(
                "registry",
                lambda: RegistryClient(
                    self.settings.registry_url,
                    timeout_s=self.settings.registry_timeout_s,
                    transport=self.overrides.get("registry_transport"),
                    api_key=self._registry_key(),
                ),
            )
            self.resources.append(
                Resource("registry", stop=getattr(registry, "close", None), ping=registry.ping)
            )
        return self._made["registry"]

    def offsets(self, group: str) -> StateOffsets:
        """The handled offsets of ``group``, one of the spec's checkpointed groups, which the
        service commits once its checkpoint holds them (``modelbus_platform.offsets``);
        tests hand in ``offsets``."""
        groups = {
            sub.group_for(self.settings) for sub in self.spec.subscriptions if sub.checkpointed
        }
        if group not in groups:
            raise ValueError(f"{group} is not a checkpointed group of {self.spec.name}")
        return self.override("offsets", lambda: self.bus.offsets(group))

    def policies(self) -> Policies:
        """Each model's live policy, read from the registry (``policy_ttl_s``); the service's
        readiness does not depend on it (a policy that cannot be read leaves the settings).
        Tests hand in a ``registry`` (or ``policies``)."""

        def make() -> Policies:
            registry = self.overrides.get("registry") or self._made.get("registry")
            if registry is None:
                client = RegistryClient(
                    self.settings.registry_url,
                    timeout_s=self.settings.registry_timeout_s,
                    transport=self.overrides.get("registry_transport"),
                    api_key=self._registry_key(),
                )
                self.resources.append(Resource("policy-registry", stop=client.close))
                registry = client
            return Policies(registry, ttl_s=self.settings.policy_ttl_s)

        return self.once("policies", make)

    def artifact_trust(self) -> ArtifactTrust:
        """This service's signer and verifier of artifacts (``modelbus_platform.artifacts``)."""
        return self.once("artifact-trust", lambda: ArtifactTrust.from_settings(self.settings))

    def pickle_policy(self) -> AllowPickle:
        """Whether a model's live policy allows pickled artifacts (read only for a pickle)."""
        return self.once("pickle-policy", lambda: pickle_policy(self.policies()))

    def authenticator(self) -> Authenticator:
        """Who is calling (API keys, JWTs): the HTTP chain's auth layer uses it when auth is on,
        the registry's key admin API always. API keys are read from ``api_keys`` through a
        MongoDB client of its own (the bus's idempotency ledger stays where the service put
        it; nothing is read before the first request); tests hand in a ``key_store``."""

        def make() -> Authenticator:
            store = self.overrides.get("key_store")
            if store is None:
                client, db = connect_mongo(self.settings)
                store = MongoKeyStore(db)
                self.resources.append(Resource("api-keys", stop=client.close))
            return build_authenticator(self.settings, store)

        return self.once("authenticator", make)

    def _registry_key(self) -> str | None:
        """The key this service reads the registry's API with (auth on at the registry)."""
        key = self.settings.registry_api_key
        return key.get_secret_value() if key is not None else None

    def api_keys(self, *, manage: bool = False) -> ApiKeys:
        """The API keys; ``manage``: this service makes them (the registry), so it creates the
        collection's index at start (the others only read, and need MongoDB only then)."""
        keys = self.authenticator().keys
        init = getattr(keys.store, "init", None)
        if manage and init is not None and "api-key-indexes" not in self._made:
            self._made["api-key-indexes"] = True
            self.resources.append(Resource("api-key-indexes", start=init))
        return keys

    def events(self, *outboxes: OutboxStore) -> Relay:
        """The service's relay (one per service): publishes the events waiting in
        ``outboxes`` (the stores' own outboxes, whose indexes the stores create)."""
        if self.relay is None:
            self.relay = Relay([], self.bus, metrics=self.metrics)
        self.relay.stores.extend(outboxes)
        return self.relay

    # -- building ---------------------------------------------------------------------------

    def bind(self, wiring: Wiring) -> None:
        bind(self.bus, self.spec, wiring.context, self.settings)


def bind(bus: Any, spec: ServiceSpec, context: Any, settings: ServiceSettings) -> None:
    """Subscribe ``spec``'s handlers, bound to ``context``, on ``bus`` (the kit does it for the
    service's own bus; benchmarks and tests hand in theirs)."""
    for sub in spec.subscriptions:
        handler = functools.partial(sub.handler, context)
        group = sub.group_for(settings)
        if sub.batch:
            bus.subscribe_batch(
                sub.event,
                group=group,
                handler=handler,
                offset_reset=sub.offset_reset,
                columns=sub.columns,
                checkpointed=sub.checkpointed,
            )
        else:
            bus.subscribe(
                sub.event,
                group=group,
                handler=handler,
                offset_reset=sub.offset_reset,
                dedupe=sub.dedupe,
            )


class Lifecycle:
    """Starts and stops a wired service: resources, then the bus, then tasks; the reverse."""

    def __init__(self, kit: Kit, wiring: Wiring) -> None:
        self.kit = kit
        self.resources = [*kit.resources, *wiring.resources]
        self.tasks = list(wiring.tasks)
        if kit.relay is not None:
            relay = kit.relay
            self.tasks.insert(0, Task("outbox-relay", relay.run, stop=relay.close))
        self.started = False
        self._running: list[tuple[Task, asyncio.Task[Any]]] = []

    async def start(self) -> None:
        for resource in self.resources:
            if resource.start is not None:
                await resource.start()
        await self.kit.bus.start()
        for task in self.tasks:
            running = asyncio.create_task(task.run(), name=task.name)
            running.add_done_callback(_report_failure)
            self._running.append((task, running))
        self.started = True
        log.info(f"{self.kit.spec.name}.started", port=self.kit.settings.http_port)

    async def stop(self) -> None:
        self.started = False
        for task, running in reversed(self._running):
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await running
            if task.stop is not None:
                try:  # bounded: a batch waiting out an outage must not hold the shutdown
                    await asyncio.wait_for(task.stop(), TASK_STOP_TIMEOUT_S)
                except Exception as exc:
                    log.warning("task.stop_failed", task=task.name, error=str(exc))
        self._running.clear()
        await self.kit.bus.stop()
        for resource in reversed(self.resources):
            if resource.stop is not None:
                try:
                    await resource.stop()
                except Exception as exc:
                    log.warning("resource.stop_failed", resource=resource.name, error=str(exc))
        log.info(f"{self.kit.spec.name}.stopped")

    async def _dependencies(self) -> bool:
        """False while a consumer waits for a dependency that does not answer."""
        return self.kit.bus.dependencies_ok()

    async def _consumers(self) -> bool:
        """False while a consumer group has a backlog and makes no progress."""
        return self.kit.bus.consumers_ok()

    async def readiness(self) -> dict[str, bool]:
        checks = {
            "bus": self.kit.bus.ping,
            "dependencies": self._dependencies,
            "consumers": self._consumers,
            **{r.name: r.ping for r in self.resources if r.ping},
        }
        if not self.started:
            return dict.fromkeys(checks, False)
        names = list(checks)
        results = await asyncio.gather(*(check() for check in checks.values()))
        return dict(zip(names, (bool(r) for r in results), strict=True))


def _report_failure(task: asyncio.Task[Any]) -> None:
    """A background task that died is logged (it would fail silently otherwise)."""
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        log.error("task.failed", task=task.get_name(), error=f"{type(exc).__name__}: {exc}")


def build_app(
    spec: ServiceSpec, settings: ServiceSettings | None = None, **overrides: Any
) -> ServiceApp:
    """The service's ASGI app: wired, its consumer groups bound, its lifespan ready."""
    settings = settings or spec.settings()
    kit = Kit(spec, settings, overrides)
    wiring = spec.wire(kit)
    authenticator = kit.authenticator() if settings.auth == "on" else None
    kit.bind(wiring)
    lifecycle = kit.lifecycle = Lifecycle(kit, wiring)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await lifecycle.start()
        app.state.context = wiring.context  # routes answer 503 until the service has started
        try:
            yield
        finally:
            app.state.context = None
            await lifecycle.stop()

    app = create_app(
        title=spec.title,
        description=spec.description,
        metrics=kit.metrics,
        readiness=kit.readiness,
        lifespan=lifespan,
        max_body_bytes=settings.max_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
    )
    for router in wiring.routers:
        app.include_router(router)
    if wiring.configure_app is not None:
        wiring.configure_app(app)
    if authenticator is not None:  # inside the starting gate: no key is read before start
        app.secured = frozenset(settings.auth_open_paths)
        app.add_middleware(
            AuthMiddleware,
            service_app=app,
            authenticator=authenticator,
            open_paths=settings.auth_open_paths,
        )
    app.gate_until_started(spec.name, open_paths=wiring.ungated)
    app.state.kit = kit
    app.state.bus = kit.bus
    return app


def run_service(spec: ServiceSpec) -> None:
    """``python -m modelbus_<service>``: settings from the environment, logging, serve."""
    settings = spec.settings()
    configure_logging(settings.service_name, settings.log_level, settings.log_json)
    run(build_app(spec, settings), settings.http_host, settings.http_port)


def load_specs() -> dict[str, ServiceSpec]:
    """Every installed service's spec (entry point group ``modelbus.services``), by name."""
    specs = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        spec = ep.load()
        specs[spec.name] = spec
    return dict(sorted(specs.items()))
