"""The composition root: ``build_app(settings)`` wires Mongo, object storage, the bus, the
service, handlers and the HTTP API. Nothing connects until the app's lifespan starts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import structlog
from fastapi import FastAPI

from modelbus_platform.bus import EventBus
from modelbus_platform.http import create_app
from modelbus_platform.metrics import Metrics
from modelbus_platform.scheduler import CronScheduler
from modelbus_platform.stores import (
    MongoProcessedEvents,
    build_object_store,
    connect_mongo,
    mongo_ping,
)

from . import api
from .adapters import MongoFeedbackStore, MongoLockStore, MongoRunStore
from .config import TrainerSettings
from .domain import NAMESPACE
from .handlers import schedule_fired, subscribe
from .service import TrainerMetrics, TrainerService

log = structlog.get_logger(__name__)


def build_app(settings: TrainerSettings) -> FastAPI:
    metrics = Metrics(settings.service_name)
    trainer_metrics = TrainerMetrics(metrics)
    parts: dict = {}

    async def readiness() -> dict[str, bool]:
        if not parts:
            return {"bus": False, "mongo": False, "object_store": False}
        return {
            "bus": await parts["bus"].ping(),
            "mongo": await mongo_ping(parts["db"]),
            "object_store": await parts["store"].ping(),
        }

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client, db = connect_mongo(settings)
        store = build_object_store(settings)
        processed = MongoProcessedEvents(db)
        runs, feedback = MongoRunStore(db), MongoFeedbackStore(db)
        for part in (processed, runs, feedback):
            await part.init()
        bus = EventBus.from_settings(settings, metrics=metrics, processed=processed)
        service = TrainerService(
            settings,
            runs=runs,
            feedback=feedback,
            locks=MongoLockStore(db),
            store=store,
            publisher=bus,
            metrics=trainer_metrics,
        )
        subscribe(bus, service)
        app.state.service = service
        parts.update(bus=bus, db=db, store=store)
        await bus.start()
        resumed = await service.resume()
        scheduler = CronScheduler(
            settings.schedules,
            partial(schedule_fired, publisher=bus),
            namespace=NAMESPACE,
            max_sleep_s=settings.schedule_max_sleep_s,
            name="trainer",
        )
        schedule_task = asyncio.create_task(scheduler.run()) if settings.schedules else None
        app.state.scheduler = scheduler
        log.info(
            "trainer.started",
            resumed_runs=resumed,
            port=settings.http_port,
            schedules=sorted(settings.schedules),
        )
        try:
            yield
        finally:
            if schedule_task is not None:
                schedule_task.cancel()
                await asyncio.gather(schedule_task, return_exceptions=True)
            await service.stop()
            await bus.stop()
            await client.close()
            parts.clear()
            log.info("trainer.stopped")

    app = create_app(
        title="modelbus trainer",
        description="Trains models on request or drift; emits ModelTrained with full lineage.",
        metrics=metrics,
        readiness=readiness,
        lifespan=lifespan,
        max_body_bytes=settings.max_body_bytes,
    )
    app.include_router(api.router)
    return app
