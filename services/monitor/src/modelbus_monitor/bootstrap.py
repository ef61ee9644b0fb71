"""The monitor as a service: what it is (``SPEC``) and its one composition root (``wire``).

Nothing connects here. The kit's lifespan creates the indexes and rebuilds the state
(champions and references from the registry, detector checkpoints, today's daily windows, open
incidents) before it joins the consumer groups; then it runs the periodic tick (re-emission,
checkpoints, daily windows) and the outbox relay. On shutdown, before the consumers stop, it
checkpoints once more (and commits the telemetry offsets that checkpoint covers)."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from modelbus_contracts import (
    DataQualityAlert,
    DriftDetected,
    IncidentUpdated,
    LabelObserved,
    ModelEvaluated,
    ModelPolicyChanged,
    ModelPromoted,
    ModelRolledBack,
    PredictionMade,
)
from modelbus_platform.kit import Kit, Resource, ServiceSpec, Subscription, Task, Wiring
from modelbus_platform.kit import build_app as build_service_app

from . import handlers
from .adapters import MongoDailyStore, MongoIncidentStore, MongoStateStore
from .api import router
from .config import MonitorSettings
from .daily import Thresholds
from .metrics import MonitorMetrics
from .service import MonitorService, detector_config

log = structlog.get_logger(__name__)

GROUP = "monitor"
CONTROL_GROUP = "monitor-control"


def wire(kit: Kit) -> Wiring:
    settings: MonitorSettings = kit.settings  # type: ignore[assignment]
    db = kit.mongo()
    incidents = MongoIncidentStore(db)
    daily = MongoDailyStore(db) if settings.daily_enabled else None
    states = MongoStateStore(db)
    service = MonitorService(
        detector_config(settings),
        publisher=kit.bus,
        events=kit.events(incidents.outbox),
        incidents=incidents,
        registry=kit.registry(),
        metrics=kit.metrics,  # type: ignore[arg-type]
        registry_retry_s=settings.registry_retry_s,
        states=states,
        offsets=kit.offsets(GROUP),
        daily=daily,
        checkpoint_s=settings.checkpoint_s,
        thresholds=Thresholds(psi_warn=settings.psi_warn, psi_drift=settings.psi_drift),
        policies=kit.policies(),
    )

    async def rebuild() -> None:
        await incidents.init()
        await states.init()
        if daily is not None:
            await daily.init()
        await service.rebuild()

    return Wiring(
        context=service,
        routers=[router],
        resources=[Resource("monitor-state", start=rebuild)],
        # the last checkpoint is taken while the consumers still run: its commit needs them
        tasks=[
            Task(
                "tick",
                lambda: tick_forever(service, settings.tick_s),
                stop=final_checkpoint(service),
            )
        ],
    )


async def tick_forever(service: MonitorService, period_s: float) -> None:
    while True:
        await asyncio.sleep(period_s)
        try:
            await service.tick()
        except Exception as exc:  # the tick must outlive a transient store or bus error
            log.warning("monitor.tick_failed", error=str(exc))


def final_checkpoint(service: MonitorService):
    async def checkpoint() -> None:
        try:
            await service.checkpoint()
        except Exception as exc:
            log.warning("monitor.final_checkpoint_failed", error=str(exc))

    return checkpoint


SPEC = ServiceSpec(
    name="monitor",
    title="modelbus monitor",
    description=(
        "Joins labels with predictions, runs streaming drift detectors on the model's error "
        "and on every feature, checks data quality, compares each day with the day before "
        "and with the reference, opens incidents and emits DriftDetected / DataQualityAlert."
    ),
    settings=MonitorSettings,
    metrics=MonitorMetrics,
    wire=wire,
    publishes=(DriftDetected, DataQualityAlert, IncidentUpdated),
    subscriptions=(
        Subscription(
            PredictionMade,
            GROUP,
            handlers.predictions_made,
            batch=True,
            columns=True,
            checkpointed=True,
        ),
        Subscription(
            LabelObserved,
            GROUP,
            handlers.labels_observed,
            batch=True,
            columns=True,
            checkpointed=True,
        ),
        Subscription(ModelPromoted, CONTROL_GROUP, handlers.model_promoted),
        Subscription(ModelRolledBack, CONTROL_GROUP, handlers.model_rolled_back),
        Subscription(ModelEvaluated, CONTROL_GROUP, handlers.model_evaluated),
        Subscription(ModelPolicyChanged, CONTROL_GROUP, handlers.policy_changed),
    ),
)


def build_app(settings: MonitorSettings | None = None, **overrides: Any):
    return build_service_app(SPEC, settings, **overrides)
