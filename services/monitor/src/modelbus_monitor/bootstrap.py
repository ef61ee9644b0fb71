"""The composition root: ``build_app(settings)`` wires Mongo, the registry client, the bus and the
service; its lifespan connects, rebuilds state (incidents, detector checkpoints, today's daily
windows), subscribes, starts consuming and runs the periodic tick (re-trigger, checkpoint, daily
windows); on shutdown it checkpoints once more."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import structlog
from fastapi import FastAPI

from modelbus_platform.bus import EventBus
from modelbus_platform.http import create_app
from modelbus_platform.registry import RegistryClient
from modelbus_platform.stores import MongoProcessedEvents, connect_mongo

from .adapters import MongoDailyStore, MongoIncidentStore, MongoStateStore
from .api import router
from .config import MonitorSettings
from .daily import Thresholds
from .handlers import subscribe
from .metrics import MonitorMetrics
from .service import MonitorService, detector_config

log = structlog.get_logger(__name__)


def build_app(
    settings: MonitorSettings, *, registry_transport: httpx.AsyncBaseTransport | None = None
) -> FastAPI:
    metrics = MonitorMetrics(settings.service_name)
    parts: dict = {}

    async def readiness() -> dict[str, bool]:
        if not parts:
            return {"bus": False, "mongo": False, "registry": False}
        return {
            "bus": await parts["bus"].ping(),
            "mongo": await parts["incidents"].ping(),
            "registry": await parts["registry"].ping(),
        }

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client, db = connect_mongo(settings)
        processed = MongoProcessedEvents(db)
        incidents = MongoIncidentStore(db)
        registry = RegistryClient(settings.registry_url, transport=registry_transport)
        bus = EventBus.from_settings(settings, metrics=metrics, processed=processed)
        service = MonitorService(
            detector_config(settings),
            publisher=bus,
            incidents=incidents,
            registry=registry,
            metrics=metrics,
            registry_retry_s=settings.registry_retry_s,
            states=MongoStateStore(db),
            daily=MongoDailyStore(db) if settings.daily_enabled else None,
            checkpoint_s=settings.checkpoint_s,
            thresholds=Thresholds(psi_warn=settings.psi_warn, psi_drift=settings.psi_drift),
        )
        await processed.init()
        await incidents.init()
        if service.daily is not None:
            await service.daily.init()
        await service.rebuild()
        subscribe(bus, service)
        await bus.start()
        app.state.service = service
        parts.update(bus=bus, incidents=incidents, registry=registry)
        ticker = asyncio.create_task(_tick_forever(service, settings.tick_s))
        log.info("monitor.started", port=settings.http_port)
        try:
            yield
        finally:
            parts.clear()
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            await bus.stop()
            await _final_checkpoint(service)
            await registry.close()
            await client.close()

    app = create_app(
        title="modelbus monitor",
        description="Joins predictions with labels, runs River ADWIN drift detectors on model "
        "error and inputs, opens incidents and emits DriftDetected / DataQualityAlert.",
        metrics=metrics,
        readiness=readiness,
        lifespan=lifespan,
        max_body_bytes=settings.max_body_bytes,
    )
    app.include_router(router)
    return app


async def _tick_forever(service: MonitorService, period_s: float) -> None:
    while True:
        await asyncio.sleep(period_s)
        try:
            await service.tick()
        except Exception as exc:  # the tick must outlive a transient store or bus error
            log.warning("monitor.tick_failed", error=str(exc))


async def _final_checkpoint(service: MonitorService) -> None:
    try:
        await service.store_daily()
        await service.checkpoint()
    except Exception as exc:
        log.warning("monitor.final_checkpoint_failed", error=str(exc))
