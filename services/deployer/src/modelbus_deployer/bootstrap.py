"""The deployer's composition root: ``build_app(settings)`` wires adapters, service and bus.

Nothing connects at import time; the app's lifespan connects MongoDB and object storage, creates
indexes, subscribes to ModelRegistered (group ``settings.consumer_group``) and, in batches, to
PredictionMade, LabelObserved, ModelLoadFailed and ScoringFailed (group
``settings.watch_group``), then starts the bus. On shutdown the live windows are checkpointed
once more after the bus stopped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import structlog
from fastapi import FastAPI
from prometheus_client import Counter

from modelbus_contracts import (
    LabelObserved,
    ModelLoadFailed,
    ModelRegistered,
    PredictionMade,
    ScoringFailed,
)
from modelbus_platform.bus import EventBus
from modelbus_platform.http import create_app
from modelbus_platform.metrics import Metrics
from modelbus_platform.stores import (
    MongoProcessedEvents,
    build_object_store,
    connect_mongo,
    mongo_ping,
)

from .adapters import MongoDecisionStore, MongoLiveStats, ObjectStoreModels
from .api import router
from .config import DeployerSettings
from .handlers import on_model_registered, on_telemetry
from .live_service import LiveService
from .service import DeployerService

log = structlog.get_logger(__name__)


@dataclass
class Runtime:
    """What the lifespan connected; readiness looks here (empty until start-up)."""

    bus: EventBus | None = None
    db: object | None = None
    models: ObjectStoreModels | None = None


def build_app(settings: DeployerSettings) -> FastAPI:
    metrics = Metrics(settings.service_name)
    decisions_total = Counter(
        "modelbus_deployer_decisions_total",
        "Promotion decisions, by outcome",
        ["decision"],
        registry=metrics.registry,
    )
    runtime = Runtime()

    async def readiness() -> dict[str, bool]:
        return {
            "bus": runtime.bus is not None and await runtime.bus.ping(),
            "mongo": runtime.db is not None and await mongo_ping(runtime.db),  # type: ignore[arg-type]
            "object_store": runtime.models is not None and await runtime.models.ping(),
        }

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client, db = connect_mongo(settings)
        processed = MongoProcessedEvents(db)
        await processed.init()
        decisions = MongoDecisionStore(db)
        await decisions.init()
        models = ObjectStoreModels(build_object_store(settings))
        bus = EventBus.from_settings(settings, metrics=metrics, processed=processed)
        service = DeployerService(
            settings=settings,
            decisions=decisions,
            models=models,
            publisher=bus,
            on_decision=lambda decision: decisions_total.labels(decision).inc(),
        )
        stats = MongoLiveStats(db)
        await stats.init()
        live = LiveService(
            settings=settings, decisions=decisions, publisher=bus, deployer=service, stats=stats
        )
        service.on_stage = live.note
        app.state.service = service
        app.state.live = live
        bus.subscribe(
            ModelRegistered,
            group=settings.consumer_group,
            handler=on_model_registered(service),
        )
        telemetry = on_telemetry(live)
        for event_cls in (PredictionMade, LabelObserved, ModelLoadFailed, ScoringFailed):
            bus.subscribe_batch(event_cls, group=settings.watch_group, handler=telemetry)
        await bus.start()
        runtime.bus, runtime.db, runtime.models = bus, db, models
        log.info("deployer.started", group=settings.consumer_group, db=settings.mongo_db)
        try:
            yield
        finally:
            runtime.bus = runtime.db = runtime.models = None
            await bus.stop()
            await live.close()
            await client.close()
            log.info("deployer.stopped")

    app = create_app(
        title="modelbus deployer",
        description="Judges every registered model against the champion on the same hold-out "
        "and emits ModelEvaluated (promote | reject) with its gates, numbers and reasons.",
        metrics=metrics,
        readiness=readiness,
        lifespan=lifespan,
        max_body_bytes=settings.max_body_bytes,
    )
    app.include_router(router)
    return app
