"""The deployer as a service: what it is (``SPEC``) and its one composition root (``wire``).

Nothing connects here; the kit's lifespan creates the indexes, joins the consumer groups
(``consumer_group`` for ModelRegistered; ``watch_group``, in batches, for the live telemetry)
and starts the outbox relay. On shutdown the live windows are checkpointed once more after the
consumers stopped.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter

from modelbus_contracts import (
    LabelObserved,
    ModelEvaluated,
    ModelLoadFailed,
    ModelPolicyChanged,
    ModelRegistered,
    ModelRollbackRequested,
    PredictionMade,
    ScoringFailed,
)
from modelbus_platform.kit import Kit, Resource, ServiceSpec, Subscription, Task, Wiring
from modelbus_platform.kit import build_app as build_service_app
from modelbus_platform.metrics import Metrics

from . import handlers
from .adapters import MongoDecisionStore, MongoLiveStats, ObjectStoreModels
from .api import router
from .config import DeployerSettings
from .handlers import Deployer
from .live_service import LiveService
from .service import DeployerService


class DeployerMetrics(Metrics):
    def __init__(self, service: str = "deployer") -> None:
        super().__init__(service)
        self.decisions = Counter(
            "modelbus_deployer_decisions_total",
            "Promotion decisions, by outcome",
            ["decision"],
            registry=self.registry,
        )


def wire(kit: Kit) -> Wiring:
    settings: DeployerSettings = kit.settings  # type: ignore[assignment]
    metrics: DeployerMetrics = kit.metrics  # type: ignore[assignment]
    db = kit.mongo()
    decisions = MongoDecisionStore(db)
    stats = MongoLiveStats(db)
    models = ObjectStoreModels(kit.object_store(), kit.artifact_trust(), kit.pickle_policy())
    relay = kit.events(decisions.outbox)
    service = DeployerService(
        settings=settings,
        decisions=decisions,
        models=models,
        events=relay,
        on_decision=lambda decision: metrics.decisions.labels(decision).inc(),
        live_policies=kit.policies(),
    )
    live = LiveService(
        settings=settings,
        decisions=decisions,
        events=relay,
        deployer=service,
        stats=stats,
        offsets=kit.offsets(settings.watch_group),
    )
    service.on_stage = live.note
    return Wiring(
        context=Deployer(service, live),
        routers=[router],
        resources=[
            Resource("decisions", start=decisions.init),
            Resource("live-windows", start=stats.init),
        ],
        # the last checkpoint is taken while the consumers still run: its commit needs them
        tasks=[
            Task(
                "live-windows",
                lambda: live.flush_forever(max(settings.live_checkpoint_s, 1.0)),
                stop=live.close,
            )
        ],
    )


SPEC = ServiceSpec(
    name="deployer",
    title="modelbus deployer",
    description=(
        "Judges every registered model against the champion on the same hold-out and emits "
        "ModelEvaluated (promote | reject | pending_approval | shadow | canary) with every "
        "gate's numbers and reasons; follows rollouts and new champions on live traffic and "
        "asks for a rollback on a regression."
    ),
    settings=DeployerSettings,
    metrics=DeployerMetrics,
    wire=wire,
    publishes=(ModelEvaluated, ModelRollbackRequested),
    subscriptions=(
        Subscription(ModelRegistered, "{consumer_group}", handlers.model_registered),
        Subscription(ModelPolicyChanged, "{consumer_group}-policies", handlers.policy_changed),
        *(
            Subscription(event, "{watch_group}", handlers.telemetry, batch=True, checkpointed=True)
            for event in (PredictionMade, LabelObserved, ModelLoadFailed, ScoringFailed)
        ),
    ),
)


def build_app(settings: DeployerSettings | None = None, **overrides: Any):
    return build_service_app(SPEC, settings, **overrides)
