"""The batch service as a service: what it is (``SPEC``) and its one composition root (``wire``).

Nothing connects here. The kit's lifespan joins the consumer group ``batch``, then starts in the
background the job store (indexes created, retried until MongoDB answers; then the jobs this
instance left unfinished are re-run; readiness says ``jobs`` meanwhile), the cron scheduler and
the outbox relay. On shutdown running jobs are cancelled: they stay ``running`` in their record
and are re-run at the next start.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from modelbus_contracts import BatchScoringCompleted, BatchScoringRequested
from modelbus_platform.kit import Kit, Resource, ServiceSpec, Subscription, Task, Wiring
from modelbus_platform.kit import build_app as build_service_app
from modelbus_platform.scheduler import CronScheduler

from . import handlers
from .adapters import MongoJobStore
from .api import build_router
from .config import BatchSettings
from .domain import SCHEDULE_NAMESPACE
from .service import BatchMetrics, BatchService


def wire(kit: Kit) -> Wiring:
    settings: BatchSettings = kit.settings  # type: ignore[assignment]
    jobs = kit.override("jobs", lambda: MongoJobStore(kit.mongo()))
    service = BatchService(
        jobs=jobs,
        store=kit.object_store(),
        trust=kit.artifact_trust(),
        allow_pickle=kit.pickle_policy(),
        registry=kit.registry(),
        events=kit.events(jobs.outbox),
        metrics=kit.metrics,  # type: ignore[arg-type]
        producer=settings.service_name,
        instance=settings.instance_id,
        bucket=settings.bucket,
        input_prefixes=settings.batch_input_prefixes,
        output_prefixes=settings.batch_output_prefixes,
        chunk_rows=settings.batch_chunk_rows,
        id_column=settings.batch_id_column or None,
    )
    scheduler = CronScheduler(
        settings.batch_schedules,
        partial(handlers.schedule_fired, publisher=kit.bus, producer=settings.service_name),
        namespace=SCHEDULE_NAMESPACE,
        max_sleep_s=settings.schedule_max_sleep_s,
        name="batch",
    )

    async def jobs_ready() -> bool:
        return service.ready.is_set()

    return Wiring(
        context=service,
        routers=[build_router(service)],
        resources=[Resource("jobs", ping=jobs_ready)],
        tasks=[
            Task("job-store", service.start, stop=service.stop),
            Task("batch-schedules", scheduler.run),
        ],
    )


SPEC = ServiceSpec(
    name="batch",
    title="modelbus batch",
    description=(
        "Scores whole CSV or Parquet files in object storage with a model's champion or a "
        "named version, on request, on BatchScoringRequested or on a cron schedule."
    ),
    settings=BatchSettings,
    metrics=BatchMetrics,
    wire=wire,
    publishes=(BatchScoringCompleted, BatchScoringRequested),
    subscriptions=(
        Subscription(BatchScoringRequested, handlers.BATCH_GROUP, handlers.batch_requested),
    ),
)


def build_app(settings: BatchSettings | None = None, **overrides: Any):
    return build_service_app(SPEC, settings, **overrides)
