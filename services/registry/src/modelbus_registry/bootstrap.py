"""The registry as a service: what it is (``SPEC``) and its one composition root (``wire``).

Nothing connects here: the kit's lifespan starts the resources (indexes), then the consumer
group, then the outbox relay."""

from __future__ import annotations

from functools import partial
from typing import Any

from prometheus_client import Counter

from modelbus_contracts import (
    ModelEvaluated,
    ModelPolicyChanged,
    ModelPromoted,
    ModelRegistered,
    ModelRollbackRequested,
    ModelRolledBack,
    ModelRolloutChanged,
    ModelTrained,
)
from modelbus_platform.auth import key_admin_router
from modelbus_platform.dlq import DeadLetters, dlq_router
from modelbus_platform.kit import Kit, Resource, ServiceSpec, Subscription, Task, Wiring
from modelbus_platform.kit import build_app as build_service_app
from modelbus_platform.metrics import Metrics

from . import handlers
from .adapters import MongoRegistryRepository
from .api import IMPORT_UPLOADS, build_router
from .config import RegistrySettings
from .service import RegistryService


class RegistryMetrics(Metrics):
    def __init__(self, service: str = "registry") -> None:
        super().__init__(service)
        self.decisions = Counter(
            "modelbus_registry_decisions_total",
            "Audit records written, by action (registered, promoted, promotion_conflict, ...)",
            ["action"],
            registry=self.registry,
        )


def wire(kit: Kit) -> Wiring:
    settings: RegistrySettings = kit.settings  # type: ignore[assignment]
    metrics: RegistryMetrics = kit.metrics  # type: ignore[assignment]
    db = kit.mongo()
    repo = MongoRegistryRepository(db)
    relay = kit.events(*repo.outboxes)
    service = RegistryService(
        repo,
        kit.object_store(),
        relay,
        on_decision=lambda action: metrics.decisions.labels(action).inc(),
        trust=kit.artifact_trust(),
    )
    tasks = []
    if settings.registered_timeout_s > 0:
        sweep = partial(
            service.run_sweeps,
            settings.registered_sweep_interval_s,
            settings.registered_timeout_s,
            settings.registered_reannounce_max,
        )
        tasks.append(Task("registered-sweep", sweep))
    return Wiring(
        context=service,
        routers=[
            build_router(settings.audit_page_limit),
            key_admin_router(kit.api_keys(manage=True), enabled=settings.auth == "on"),
            dlq_router(DeadLetters.from_settings(settings)),
        ],
        configure_app=lambda app: app.allow_uploads(IMPORT_UPLOADS),
        resources=[Resource("registry-indexes", start=repo.init)],
        tasks=tasks,
    )


SPEC = ServiceSpec(
    name="registry",
    title="modelbus registry",
    description=(
        "Source of truth for models: versions, sha256-verified artifacts, lineage, metrics, "
        "aliases moved only by compare-and-set, and an append-only audit log. Registers trained "
        "versions after verifying their artifact, moves the champion alias on the deployer's "
        "verdict, rolls back."
    ),
    settings=RegistrySettings,
    metrics=RegistryMetrics,
    wire=wire,
    publishes=(
        ModelRegistered,
        ModelPromoted,
        ModelRolledBack,
        ModelRolloutChanged,
        ModelPolicyChanged,
    ),
    subscriptions=(
        Subscription(ModelTrained, "{consumer_group}", handlers.model_trained),
        Subscription(ModelEvaluated, "{consumer_group}", handlers.model_evaluated),
        Subscription(ModelRollbackRequested, "{consumer_group}", handlers.rollback_requested),
    ),
)


def build_app(settings: RegistrySettings | None = None, **overrides: Any):
    return build_service_app(SPEC, settings, **overrides)
