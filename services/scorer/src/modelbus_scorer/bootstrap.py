"""The scorer as a service: what it is (``SPEC``) and its one composition root (``wire``).

Nothing connects here. The kit's lifespan joins the consumer groups (``scorer`` for the stream,
in micro-batches; ``scorer-control-<instance>`` for promotions, rollbacks and rollouts: every
replica sees every control event), then runs the prediction log and keeps the models in sync
with the registry (first sync at once, retried until the registry answers, then every
``sync_interval_s`` as a safety net for missed control events).
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from modelbus_contracts import (
    ModelLoadFailed,
    ModelPromoted,
    ModelRolledBack,
    ModelRolloutChanged,
    PredictionMade,
    ScoringFailed,
    ScoringRequested,
)
from modelbus_platform.http import ServiceApp
from modelbus_platform.kit import Kit, Resource, ServiceSpec, Subscription, Task, Wiring
from modelbus_platform.kit import build_app as build_service_app

from . import handlers
from .api import Scoring, build_router, install_hot_routes
from .config import ScorerSettings
from .domain import ModelHolder
from .prediction_log import PredictionLog
from .service import ScorerService
from .telemetry import ScorerMetrics

log = structlog.get_logger(__name__)

FIRST_RETRY_S = 0.5
CONTROL_GROUP = "scorer-control-{instance_id}"


def wire(kit: Kit) -> Wiring:
    settings: ScorerSettings = kit.settings  # type: ignore[assignment]
    metrics: ScorerMetrics = kit.metrics  # type: ignore[assignment]
    prediction_log = PredictionLog(
        kit.bus,
        metrics,
        producer=settings.service_name,
        capacity=settings.prediction_log_queue,
        linger_s=settings.prediction_log_linger_s,
    )
    service = ScorerService(
        holder=ModelHolder(),
        registry=kit.registry(),
        store=kit.object_store(),
        trust=kit.artifact_trust(),
        allow_pickle=kit.pickle_policy(),
        publisher=kit.bus,
        metrics=metrics,
        prediction_log=prediction_log,
        producer=settings.service_name,
        instance=settings.instance_id,
        max_instances=settings.max_instances_per_request,
    )

    async def synced() -> bool:
        return service.sync_attempted

    async def run_prediction_log() -> None:
        await prediction_log.start()
        await asyncio.Event().wait()

    def hot_routes(app: ServiceApp) -> None:
        app.fast_router = settings.fast_http
        install_hot_routes(app, Scoring(service))

    return Wiring(
        context=service,
        routers=[build_router(service, kit.readiness)],
        resources=[Resource("synced", ping=synced)],
        tasks=[
            Task("prediction-log", run_prediction_log, stop=prediction_log.stop),
            Task("registry-sync", lambda: sync_forever(service, settings.sync_interval_s)),
        ],
        configure_app=hot_routes,
        ungated=("/v2/health/live",),
    )


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


SPEC = ServiceSpec(
    name="scorer",
    title="modelbus scorer",
    description=(
        "Serves each model's champion: native HTTP, Open Inference Protocol v2 and Kafka "
        "stream scoring; hot-swaps on promotion or rollback with the last-good model kept "
        "warm, exposes challengers in shadow or as canaries, and publishes every prediction."
    ),
    settings=ScorerSettings,
    metrics=ScorerMetrics,
    wire=wire,
    publishes=(PredictionMade, ScoringFailed, ModelLoadFailed),
    subscriptions=(
        Subscription(ScoringRequested, "scorer", handlers.scores_requested, batch=True),
        *(
            Subscription(event, CONTROL_GROUP, handlers.resync_on_control)
            for event in (ModelPromoted, ModelRolledBack, ModelRolloutChanged)
        ),
    ),
)


def control_group(settings: ScorerSettings) -> str:
    """Every scorer instance must see every control event: one group per instance."""
    return CONTROL_GROUP.format(instance_id=settings.instance_id)


def build_app(settings: ScorerSettings | None = None, **overrides: Any):
    return build_service_app(SPEC, settings, **overrides)
