"""The trainer as a service: what it is (``SPEC``) and its one composition root (``wire``).

Nothing connects here; the kit's lifespan creates the indexes, joins the consumer groups
(``trainer`` for the triggers, ``trainer-feedback`` in batches for predictions and labels),
then resumes the runs a previous process left unfinished, runs the retraining schedules and the
outbox relay. On shutdown in-flight runs are cancelled; they resume at the next start."""

from __future__ import annotations

from functools import partial
from typing import Any

from modelbus_contracts import (
    DriftDetected,
    LabelObserved,
    ModelPolicyChanged,
    ModelTrained,
    PredictionMade,
    TrainingRequested,
)
from modelbus_platform.kit import Kit, Resource, ServiceSpec, Subscription, Task, Wiring
from modelbus_platform.kit import build_app as build_service_app
from modelbus_platform.scheduler import CronScheduler

from . import api, handlers
from .adapters import MongoFeedbackStore, MongoLockStore, MongoRunStore
from .config import TrainerSettings
from .domain import NAMESPACE
from .service import TrainerMetrics, TrainerService

TRIGGER_GROUP = "trainer"
FEEDBACK_GROUP = "trainer-feedback"
POLICY_GROUP = "trainer-policies"


def wire(kit: Kit) -> Wiring:
    settings: TrainerSettings = kit.settings  # type: ignore[assignment]
    db = kit.mongo()
    runs, feedback = MongoRunStore(db), MongoFeedbackStore(db)
    service = TrainerService(
        settings,
        runs=runs,
        feedback=feedback,
        locks=MongoLockStore(db),
        store=kit.object_store(),
        publisher=kit.bus,
        events=kit.events(runs.outbox),
        metrics=kit.metrics,  # type: ignore[arg-type]
        policies=kit.policies(),
        trust=kit.artifact_trust(),
    )
    scheduler = CronScheduler(
        settings.schedules,
        partial(handlers.schedule_fired, publisher=kit.bus),
        namespace=NAMESPACE,
        max_sleep_s=settings.schedule_max_sleep_s,
        name="trainer",
        live=True,  # a model's policy may set or change its schedule while it runs
    )
    service.scheduler = scheduler
    tasks = [
        Task("resume-runs", service.resume),
        Task("retrain-schedules", scheduler.run),
        Task("policy-schedules", service.load_schedules),
    ]
    return Wiring(
        context=service,
        routers=[api.router],
        configure_app=lambda app: app.allow_uploads(api.DATASET_UPLOADS),
        resources=[
            Resource("runs", start=runs.init, stop=service.stop),
            Resource("feedback", start=feedback.init),
        ],
        tasks=tasks,
    )


SPEC = ServiceSpec(
    name="trainer",
    title="modelbus trainer",
    description=(
        "Trains a version on request, on a schedule or after drift, on uploaded data or on the "
        "feedback it collects by joining predictions with their labels; emits ModelTrained "
        "with full lineage."
    ),
    settings=TrainerSettings,
    metrics=TrainerMetrics,
    wire=wire,
    publishes=(ModelTrained, TrainingRequested),
    subscriptions=(
        Subscription(TrainingRequested, TRIGGER_GROUP, handlers.training_requested),
        Subscription(DriftDetected, TRIGGER_GROUP, handlers.drift_detected),
        Subscription(PredictionMade, FEEDBACK_GROUP, handlers.predictions_made, batch=True),
        Subscription(LabelObserved, FEEDBACK_GROUP, handlers.labels_observed, batch=True),
        Subscription(ModelPolicyChanged, POLICY_GROUP, handlers.policy_changed),
    ),
)


def build_app(settings: TrainerSettings | None = None, **overrides: Any):
    return build_service_app(SPEC, settings, **overrides)
