"""The composition root: ``build_app(settings)`` wires the job store, the registry client, the
object store, the bus, the service, its handlers, the cron scheduler and the HTTP routes.

Nothing connects here. The app's lifespan starts the bus, then, in the background, the job
store (indexes created, retried until MongoDB answers; then the jobs this instance left
unfinished are re-run) and the scheduler; on shutdown running jobs are cancelled (they stay
``running`` in their record and are re-run at the next start).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from functools import partial

import httpx
import structlog
from fastapi import FastAPI

from modelbus_contracts import BatchScoringRequested
from modelbus_platform.bus import EventBus, MemoryProcessedEvents
from modelbus_platform.http import create_app
from modelbus_platform.metrics import Metrics
from modelbus_platform.registry import Registry, RegistryClient
from modelbus_platform.scheduler import CronScheduler
from modelbus_platform.stores import ObjectStore, build_object_store, connect_mongo, mongo_ping

from .adapters import MongoJobStore
from .api import build_router
from .config import BatchSettings
from .domain import SCHEDULE_NAMESPACE
from .handlers import BATCH_GROUP, batch_requested, schedule_fired
from .ports import JobStore
from .service import BatchMetrics, BatchService

log = structlog.get_logger(__name__)


def build_app(
    settings: BatchSettings,
    *,
    registry: Registry | None = None,
    registry_transport: httpx.AsyncBaseTransport | None = None,
    store: ObjectStore | None = None,
    jobs: JobStore | None = None,
) -> FastAPI:
    metrics = Metrics(settings.service_name)
    # The dedupe ledger can live in memory: a job's id is unique in the job store, so a
    # redelivered request (or every replica's copy of a cron fire) is one job anyway.
    bus = EventBus.from_settings(settings, metrics=metrics, processed=MemoryProcessedEvents())
    object_store = store or build_object_store(settings)
    client, db = connect_mongo(settings)  # connects lazily, on the first operation
    http_registry = None
    if registry is None:
        http_registry = RegistryClient(
            settings.registry_url,
            timeout_s=settings.registry_timeout_s,
            transport=registry_transport,
        )
        registry = http_registry
    service = BatchService(
        jobs=jobs or MongoJobStore(db),
        store=object_store,
        registry=registry,
        publisher=bus,
        metrics=BatchMetrics(metrics),
        producer=settings.service_name,
        instance=settings.instance_id,
        bucket=settings.bucket if settings.object_store == "s3" else None,
        chunk_rows=settings.batch_chunk_rows,
        id_column=settings.batch_id_column or None,
    )
    bus.subscribe(
        BatchScoringRequested, group=BATCH_GROUP, handler=partial(batch_requested, service=service)
    )
    scheduler = CronScheduler(
        settings.batch_schedules,
        partial(schedule_fired, publisher=bus, producer=settings.service_name),
        namespace=SCHEDULE_NAMESPACE,
        max_sleep_s=settings.schedule_max_sleep_s,
        name="batch",
    )

    async def readiness() -> dict[str, bool]:
        bus_ok, store_ok, registry_ok, mongo_ok = await asyncio.gather(
            bus.ping(), object_store.ping(), registry.ping(), mongo_ping(db)
        )
        return {
            "bus": bus_ok,
            "object_store": store_ok,
            "registry": registry_ok,
            "mongo": mongo_ok,
            "jobs": service.ready.is_set(),
        }

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await bus.start()
        tasks = [
            asyncio.create_task(service.start(), name="batch-start"),
            asyncio.create_task(scheduler.run(), name="batch-scheduler"),
        ]
        log.info(
            "batch.service_started",
            instance=settings.instance_id,
            port=settings.http_port,
            schedules=sorted(settings.batch_schedules),
        )
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await service.stop()
            await bus.stop()
            if http_registry is not None:
                await http_registry.close()
            await client.close()
            log.info("batch.service_stopped")

    app = create_app(
        title="modelbus batch",
        description="Scores whole CSV or Parquet files in object storage with a model's champion "
        "or a named version, on request, on BatchScoringRequested or on a cron schedule.",
        metrics=metrics,
        readiness=readiness,
        lifespan=lifespan,
        max_body_bytes=settings.max_body_bytes,
    )
    app.include_router(build_router(service))
    app.state.service = service
    app.state.scheduler = scheduler
    app.state.bus = bus
    return app
