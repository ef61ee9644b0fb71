"""Wires batch scoring into the scorer app (called from ``bootstrap.build_app``).

Builds the job store (MongoDB ``batch_jobs``; the client connects lazily and only batch
scoring uses it), the batch service, the ``scorer-batch`` subscription, the HTTP routes and the
cron scheduler. ``start()``/``stop()`` run inside the app's lifespan; nothing here blocks the
online path (the job store is initialised in the background).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from functools import partial

import httpx
import structlog
from fastapi import APIRouter

from modelbus_contracts import BatchScoringRequested
from modelbus_platform.bus import EventBus
from modelbus_platform.metrics import Metrics
from modelbus_platform.stores import ObjectStore, connect_mongo

from .batch import event_job_id
from .batch_adapters import HttpVersions, MongoJobStore
from .batch_api import build_batch_router
from .batch_ports import JobStore, VersionSource
from .batch_service import BatchMetrics, BatchService, batch_requested
from .config import ScorerSettings
from .schedule import BatchSchedule, Scheduler, fire_job_id
from .service import ScorerService

log = structlog.get_logger(__name__)

BATCH_GROUP = "scorer-batch"


class BatchWiring:
    def __init__(
        self,
        settings: ScorerSettings,
        *,
        bus: EventBus,
        scorer: ScorerService,
        store: ObjectStore,
        metrics: Metrics,
        jobs: JobStore | None = None,
        versions: VersionSource | None = None,
        registry_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.client = None
        if jobs is None:
            self.client, db = connect_mongo(settings)
            jobs = MongoJobStore(db)
        self.http_versions = None
        if versions is None:
            self.http_versions = HttpVersions(
                settings.registry_url,
                timeout_s=settings.registry_timeout_s,
                transport=registry_transport,
            )
            versions = self.http_versions
        self.bus = bus
        self.service = BatchService(
            jobs=jobs,
            store=store,
            registry=scorer.registry,
            versions=versions,
            load=scorer.load,
            serving=scorer.holder.get,
            publisher=bus,
            metrics=BatchMetrics(metrics),
            producer=settings.service_name,
            instance=settings.instance_id,
            bucket=settings.bucket if settings.object_store == "s3" else None,
            chunk_rows=settings.batch_chunk_rows,
            id_column=settings.batch_id_column or None,
        )
        self.router: APIRouter = build_batch_router(self.service)
        self.scheduler = Scheduler(settings.batch_schedules, self.fire)
        self.producer = settings.service_name
        bus.subscribe(
            BatchScoringRequested,
            group=BATCH_GROUP,
            handler=partial(batch_requested, service=self.service),
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def fire(self, model: str, schedule: BatchSchedule, at: datetime) -> None:
        """A cron fire becomes a BatchScoringRequested (fresh correlation id, deterministic
        job and event ids), handled like any other request by one scorer instance."""
        job_id = fire_job_id(model, at)
        await self.bus.publish(
            BatchScoringRequested(
                event_id=event_job_id(job_id, BatchScoringRequested.event_type),
                producer=self.producer,
                model_name=model,
                job_id=job_id,
                input_uri=schedule.input_uri,
                output_uri=schedule.output_uri,
                version=schedule.version,
            )
        )

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.service.start(), name="batch-start"),
            asyncio.create_task(self.scheduler.run_forever(), name="batch-scheduler"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.service.stop()
        if self.http_versions is not None:
            await self.http_versions.close()
        if self.client is not None:
            await self.client.close()
