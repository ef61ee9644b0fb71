"""The composition root: ``build_app(settings)`` wires adapters, service, handlers and routes.

Nothing connects here; the app's lifespan starts the bus and the prediction log, then keeps the
models in sync with the registry in the background (first sync at once, retried until the
registry answers, then every ``sync_interval_s`` as a safety net for missed control events).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from functools import partial

import httpx
import structlog
from fastapi import FastAPI

from modelbus_contracts import (
    ModelPromoted,
    ModelRolledBack,
    ModelRolloutChanged,
    ScoringRequested,
)
from modelbus_platform.bus import EventBus, MemoryProcessedEvents
from modelbus_platform.http import create_app
from modelbus_platform.metrics import Metrics
from modelbus_platform.registry import Registry, RegistryClient
from modelbus_platform.stores import ObjectStore, build_object_store

from .api import Scoring, build_router, install_hot_routes
from .config import ScorerSettings
from .domain import ModelHolder
from .handlers import resync_on_control, scores_requested
from .prediction_log import PredictionLog
from .service import ScorerService
from .telemetry import ScorerMetrics

log = structlog.get_logger(__name__)

STREAM_GROUP = "scorer"
FIRST_RETRY_S = 0.5


def control_group(settings: ScorerSettings) -> str:
    """Every scorer instance must see every control event: one group per instance."""
    return f"scorer-control-{settings.instance_id}"


def build_app(
    settings: ScorerSettings,
    *,
    registry: Registry | None = None,
    registry_transport: httpx.AsyncBaseTransport | None = None,
    store: ObjectStore | None = None,
) -> FastAPI:
    metrics = Metrics(settings.service_name)
    scorer_metrics = ScorerMetrics(metrics)
    # The scorer keeps no state of its own: the dedupe ledger is in memory, and every control
    # handler is idempotent anyway (it re-reads the registry).
    bus = EventBus.from_settings(settings, metrics=metrics, processed=MemoryProcessedEvents())
    object_store = store or build_object_store(settings)
    http_registry = None
    if registry is None:
        http_registry = RegistryClient(
            settings.registry_url,
            timeout_s=settings.registry_timeout_s,
            transport=registry_transport,
        )
        registry = http_registry
    prediction_log = PredictionLog(
        bus,
        scorer_metrics,
        producer=settings.service_name,
        capacity=settings.prediction_log_queue,
        linger_s=settings.prediction_log_linger_s,
    )
    service = ScorerService(
        holder=ModelHolder(),
        registry=registry,
        store=object_store,
        publisher=bus,
        metrics=scorer_metrics,
        prediction_log=prediction_log,
        producer=settings.service_name,
        instance=settings.instance_id,
        max_instances=settings.max_instances_per_request,
    )
    control = partial(resync_on_control, service=service)
    bus.subscribe(ModelPromoted, group=control_group(settings), handler=control)
    bus.subscribe(ModelRolledBack, group=control_group(settings), handler=control)
    bus.subscribe(ModelRolloutChanged, group=control_group(settings), handler=control)
    bus.subscribe_batch(  # micro-batches: what arrived together is scored and published together
        ScoringRequested, group=STREAM_GROUP, handler=partial(scores_requested, service=service)
    )

    async def readiness() -> dict[str, bool]:
        bus_ok, store_ok, registry_ok = await asyncio.gather(
            bus.ping(), object_store.ping(), service.registry.ping()
        )
        return {
            "bus": bus_ok,
            "object_store": store_ok,
            "registry": registry_ok,
            "synced": service.sync_attempted,
        }

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await bus.start()
        await prediction_log.start()
        syncing = asyncio.create_task(sync_forever(service, settings.sync_interval_s))
        log.info("scorer.started", instance=settings.instance_id, registry=settings.registry_url)
        try:
            yield
        finally:
            syncing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await syncing
            await prediction_log.stop()
            await bus.stop()
            if http_registry is not None:
                await http_registry.close()
            log.info("scorer.stopped")

    app = create_app(
        title="modelbus scorer",
        description="Serves each model's champion: native HTTP, Open Inference Protocol v2, "
        "Kafka stream scoring; hot-swaps on promotion with the last-good model kept warm.",
        metrics=metrics,
        readiness=readiness,
        lifespan=lifespan,
        max_body_bytes=settings.max_body_bytes,
        fast_router=settings.fast_http,
    )
    app.include_router(build_router(service, readiness))
    install_hot_routes(app, Scoring(service))
    app.state.service = service
    app.state.bus = bus
    return app


async def sync_forever(service: ScorerService, interval_s: float) -> None:
    """Sync at once; retry with backoff until the registry answers; then every interval."""
    delay = FIRST_RETRY_S
    while True:
        try:
            outcomes = await service.sync_all()
            log.info("scorer.synced", models=len(outcomes))
            delay = FIRST_RETRY_S
            await asyncio.sleep(interval_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("scorer.sync_failed", error=str(exc), retry_in_s=delay)
            await asyncio.sleep(min(delay, interval_s))
            delay = min(delay * 2, interval_s)
