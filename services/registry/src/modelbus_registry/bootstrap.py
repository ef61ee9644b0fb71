"""The composition root: builds the registry's adapters, service, bus subscriptions and HTTP
app. Nothing connects at import; the app's lifespan connects, creates indexes and starts the bus.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI
from prometheus_client import Counter

from modelbus_platform.bus import EventBus
from modelbus_platform.http import create_app
from modelbus_platform.metrics import Metrics
from modelbus_platform.stores import (
    MongoProcessedEvents,
    build_object_store,
    connect_mongo,
)

from . import handlers
from .adapters import MongoRegistryRepository
from .api import build_router
from .config import RegistrySettings
from .service import RegistryService

log = structlog.get_logger(__name__)

DESCRIPTION = (
    "Source of truth for models: versions, sha256-verified artifacts, lineage, metrics, aliases "
    "moved only by compare-and-set, and an append-only audit log."
)


def build_app(settings: RegistrySettings | None = None) -> FastAPI:
    settings = settings or RegistrySettings()
    metrics = Metrics(settings.service_name)
    decisions = Counter(
        "modelbus_registry_decisions_total",
        "Audit records written, by action (registered, promoted, promotion_conflict, ...)",
        ["action"],
        registry=metrics.registry,
    )
    parts: dict = {}

    async def readiness() -> dict[str, bool]:
        if not parts:
            return {"bus": False, "mongo": False, "object_store": False}
        return {
            "bus": await parts["bus"].ping(),
            "mongo": await parts["repo"].ping(),
            "object_store": await parts["store"].ping(),
        }

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client, db = connect_mongo(settings)
        repo = MongoRegistryRepository(db)
        processed = MongoProcessedEvents(db)
        await repo.init()
        await processed.init()
        store = build_object_store(settings)
        bus = EventBus.from_settings(settings, metrics=metrics, processed=processed)
        service = RegistryService(
            repo, store, bus, on_decision=lambda action: decisions.labels(action).inc()
        )
        handlers.subscribe(bus, service, group=settings.consumer_group)
        await bus.start()
        parts.update(bus=bus, repo=repo, store=store)
        app.state.registry = service
        log.info("registry.started", db=settings.mongo_db, port=settings.http_port)
        try:
            yield
        finally:
            app.state.registry = None
            parts.clear()
            await bus.stop()
            await client.close()
            log.info("registry.stopped")

    app = create_app(
        title="modelbus registry",
        description=DESCRIPTION,
        metrics=metrics,
        readiness=readiness,
        lifespan=lifespan,
        max_body_bytes=settings.max_body_bytes,
    )
    app.include_router(build_router(settings.audit_page_limit))
    return app
