"""Every event modelbus publishes or consumes, version 1.

One Kafka topic per event type (the topic is the versioned type, e.g. ``model.trained.v1``),
keyed by model name. A breaking change is a new class with a new version plus an upcaster.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from .envelope import Event, Frozen, reject_non_finite

FiniteJSON = Annotated[dict[str, Any], AfterValidator(reject_non_finite)]
# floats are checked by pydantic itself (allow_inf_nan=False on every contract model);
# free-form JSON needs the explicit walk
Metrics = dict[str, float]

# What a model learns and predicts. ``binary``: labels 0/1, a prediction carries the class and
# the probability of class 1; ``multiclass``: labels are classes (strings or integers, compared
# as strings), a prediction carries the class and every class's probability; ``regression``: the
# label is a number, a prediction carries the value.
Task = Literal["binary", "multiclass", "regression"]
# A feature is a number or a category (a string); either may be nullable (null = missing).
FeatureKind = Literal["number", "category"]
Category = Annotated[str, Field(max_length=1000)]
FeatureValue = float | Category | None
Features = dict[str, FeatureValue]
ClassLabel = int | Annotated[str, Field(min_length=1, max_length=200)]
# ground truth: the class (classification) or the value (regression)
Outcome = int | float | Annotated[str, Field(min_length=1, max_length=200)]
Probabilities = dict[str, Annotated[float, Field(ge=0, le=1)]]

# The enumerations of the contract: every service imports these, none spells them again.
TrainingReason = Literal["manual", "api", "schedule", "drift"]
RolloutMode = Literal["none", "shadow", "canary"]
Decision = Literal["promote", "reject", "pending_approval", "shadow", "canary"]
ServedBy = Literal["champion", "fallback", "shadow", "canary"]  # who answered a prediction
FailedArm = Literal["champion", "shadow", "canary"]  # which arm of a request failed
PredictionSource = Literal["http", "stream", "batch"]
# An incident's states (the monitor): a retrain is requested (retraining), a new version serves
# and is measured (recovering), live accuracy is back (recovered), attempts ran out
# (needs_human), or a new version serves with no labelled pre-drift accuracy to judge (resolved).
IncidentState = Literal[
    "detected", "retraining", "recovering", "recovered", "needs_human", "resolved"
]


class ArtifactSignature(Frozen):
    """A detached Ed25519 signature over an artifact's sha256 and format, by the service that
    wrote it (the trainer, or the registry for an import); every loader verifies it before it
    reads the bytes (``modelbus_platform.artifacts``)."""

    signer: str = Field(min_length=1, max_length=100, description="the signing service's name")
    signature: str = Field(min_length=1, max_length=200, description="base64 Ed25519 signature")


class ArtifactRef(Frozen):
    """Where a model artifact lives in object storage, the hash it must have and who signed it."""

    uri: str = Field(description="object-store key, e.g. artifacts/churn/<sha256>.json")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)
    format: str = Field(default="modelbus.logreg.v1", description="artifact format / model flavor")
    signature: ArtifactSignature | None = Field(
        default=None, description="the writer's signature (none: written without a signing key)"
    )


class DatasetRef(Frozen):
    """A content-addressed dataset snapshot in object storage."""

    uri: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    rows: int = Field(ge=0)


class FeatureSpec(Frozen):
    """One input of a model: its name, whether it is a number or a category, and whether it may
    be null. ``categories`` are the categories seen in training (a category feature)."""

    name: str = Field(min_length=1, max_length=200)
    kind: FeatureKind = "number"
    nullable: bool = False
    categories: list[Category] = Field(default_factory=list, max_length=10_000)


class Signature(Frozen):
    """What a model version takes and gives: its features in order (the scorer enforces them),
    its task and, for a classifier with named classes, the classes in probability order."""

    features: list[FeatureSpec] = Field(min_length=1, max_length=100_000)
    task: Task = "binary"
    classes: list[Annotated[str, Field(max_length=200)]] = Field(
        default_factory=list,
        max_length=10_000,
        description="multiclass: the classes, in the order of the probabilities; binary: 0, 1",
    )


class FeatureStats(Frozen):
    """Summary of one feature in the training data: the monitor's reference. A category
    feature has its category ``frequencies`` (shares of the non-missing values); its numeric
    fields are 0."""

    kind: FeatureKind = "number"
    frequencies: dict[str, float] = Field(
        default_factory=dict, description="category -> share of the training rows (category)"
    )
    count: int = Field(ge=0)
    mean: float
    std: float = Field(ge=0)
    min: float
    max: float
    quantiles: dict[str, float] = Field(
        default_factory=dict, description="e.g. {'p05': .., 'p50': ..}"
    )
    missing_rate: float = Field(default=0.0, ge=0, le=1)


class Lineage(Frozen):
    """Everything needed to redo a training run."""

    dataset: DatasetRef
    holdout: DatasetRef
    params: FiniteJSON = Field(default_factory=dict)
    seed: int
    code_version: str
    parent_version: int | None = None
    trigger: str = Field(description="manual | api | schedule | drift")
    trigger_event_id: uuid.UUID | None = None


class ModelSummary(Frozen):
    """A registered version as other services need to see it."""

    version: int = Field(ge=1)
    artifact: ArtifactRef
    feature_names: list[str]
    metrics: Metrics = Field(default_factory=dict)
    holdout: DatasetRef | None = None
    signature: Signature | None = Field(
        default=None, description="features with kinds, task and classes (none: binary, numbers)"
    )


# --- training -------------------------------------------------------------------------------


class TrainingRequested(Event):
    """Ask the trainer for a new version (manual, API, schedule or drift)."""

    event_type = "training.requested.v1"

    reason: TrainingReason = "manual"
    dataset_uri: str | None = Field(
        default=None, description="labelled CSV in object storage; default: collected feedback"
    )
    params: FiniteJSON = Field(default_factory=dict)
    seed: int | None = None
    since: datetime | None = Field(default=None, description="only feedback observed after this")


class ModelTrained(Event):
    event_type = "model.trained.v1"

    run_id: str
    artifact: ArtifactRef
    feature_names: list[str] = Field(min_length=1)
    metrics: Metrics
    lineage: Lineage
    reference: dict[str, FeatureStats] = Field(default_factory=dict)
    training_seconds: float = Field(ge=0)
    signature: Signature | None = Field(
        default=None, description="features with kinds, task and classes (none: binary, numbers)"
    )


# --- registry -------------------------------------------------------------------------------


class ModelRegistered(Event):
    event_type = "model.registered.v1"

    version: int = Field(ge=1)
    run_id: str
    artifact: ArtifactRef
    feature_names: list[str]
    metrics: Metrics
    lineage: Lineage
    signature: Signature | None = Field(
        default=None, description="features with kinds, task and classes (none: binary, numbers)"
    )
    champion: ModelSummary | None = Field(
        default=None, description="the champion at registration time, to compare against"
    )


class GateResult(Frozen):
    name: str
    passed: bool
    observed: float | None = None
    threshold: float | None = None
    detail: str = ""


class Rollout(Frozen):
    """How a challenger is exposed to live traffic next to the champion."""

    mode: RolloutMode
    fraction: float = Field(
        default=0.0, ge=0, le=1, description="share of live traffic the challenger answers (canary)"
    )
    step: int = Field(default=0, ge=0, description="index of the canary step (0 for shadow)")


class ModelEvaluated(Event):
    """The deployer's verdict on a challenger, with every number behind it.

    ``promote`` and ``reject`` are final. ``pending_approval`` waits for a human (the deployer's
    approve/reject API then emits the final verdict); ``shadow`` and ``canary`` expose the
    challenger to live traffic as ``rollout`` says (one event per step, each with its numbers),
    ending in ``promote`` or ``reject``.
    """

    event_type = "model.evaluated.v1"

    version: int = Field(ge=1)
    champion_version: int | None
    decision: Decision
    reasons: list[str]
    gates: list[GateResult]
    holdout: DatasetRef
    challenger_metrics: Metrics
    champion_metrics: Metrics = Field(default_factory=dict)
    rollout: Rollout | None = Field(
        default=None, description="the live exposure this decision starts (shadow/canary)"
    )
    actor: str | None = Field(default=None, description="who decided, when not the deployer")
    live_metrics: Metrics = Field(
        default_factory=dict, description="live numbers behind a rollout step (agreement, ...)"
    )


class ModelPromoted(Event):
    event_type = "model.promoted.v1"

    version: int = Field(ge=1)
    previous_version: int | None
    artifact: ArtifactRef
    feature_names: list[str]
    reason: str
    signature: Signature | None = Field(
        default=None, description="features with kinds, task and classes (none: binary, numbers)"
    )


class ModelRolledBack(Event):
    event_type = "model.rolled_back.v1"

    from_version: int = Field(ge=1)
    to_version: int = Field(ge=1)
    artifact: ArtifactRef
    feature_names: list[str]
    reason: str
    signature: Signature | None = Field(
        default=None, description="features with kinds, task and classes (none: binary, numbers)"
    )


class ModelRolloutChanged(Event):
    """The registry changed how a challenger meets live traffic; scorers re-sync on it."""

    event_type = "model.rollout_changed.v1"

    version: int | None = Field(default=None, ge=1, description="the challenger (none: cleared)")
    champion_version: int | None = None
    mode: RolloutMode
    fraction: float = Field(default=0.0, ge=0, le=1)
    reason: str = ""


class ModelRollbackRequested(Event):
    """The deployer saw the new champion regress on live traffic and asks for a rollback."""

    event_type = "model.rollback_requested.v1"

    from_version: int = Field(ge=1, description="roll back only if this is still the champion")
    to_version: int | None = Field(default=None, description="the expected previous version")
    reason: str
    evidence: Metrics = Field(default_factory=dict)


class ModelLoadFailed(Event):
    event_type = "model.load_failed.v1"

    version: int = Field(ge=1)
    instance: str
    error: str


# --- scoring --------------------------------------------------------------------------------


class ScoringRequested(Event):
    """An upstream system asks for a prediction on one record."""

    event_type = "scoring.requested.v1"

    request_id: str = Field(min_length=1, max_length=200)
    features: Features


class PredictionMade(Event):
    event_type = "prediction.made.v1"

    prediction_id: str
    request_id: str | None = None
    version: int = Field(ge=1)
    features: Features
    score: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="binary: P(class 1); multiclass: P(the predicted class); regression: none",
    )
    label: ClassLabel | None = Field(
        default=None, description="the predicted class (binary 0/1); regression: none"
    )
    probabilities: Probabilities | None = Field(
        default=None, description="multiclass: every class's probability"
    )
    value: float | None = Field(default=None, description="regression: the predicted value")
    served_by: ServedBy = "champion"
    shadow_of: str | None = Field(
        default=None, description="for served_by=shadow: the prediction_id it mirrors"
    )
    source: PredictionSource = "http"
    latency_ms: float = Field(ge=0)


class ScoringFailed(Event):
    """A scoring request (or one arm of it, e.g. a shadow) that could not be served."""

    event_type = "scoring.failed.v1"

    request_id: str
    error: str
    version: int | None = Field(default=None, ge=1, description="the version that failed")
    served_by: FailedArm | None = Field(
        default=None,
        description="the arm that failed (shadow: the caller still got the champion's answer); "
        "None: the request itself was bad",
    )


class LabelObserved(Event):
    """Ground truth for an earlier prediction, from upstream."""

    event_type = "label.observed.v1"

    prediction_id: str = Field(min_length=1)
    label: Outcome = Field(
        description="the true class (binary: 0 or 1; multiclass: the class) or, for a "
        "regression, the true value"
    )


class BatchScoringRequested(Event):
    event_type = "batch_scoring.requested.v1"

    job_id: str
    input_uri: str
    output_uri: str | None = None
    version: int | None = None


class BatchScoringCompleted(Event):
    event_type = "batch_scoring.completed.v1"

    job_id: str
    version: int
    input_uri: str
    output_uri: str
    rows: int = Field(ge=0)
    failed_rows: int = Field(ge=0)
    seconds: float = Field(ge=0)


# --- monitoring -----------------------------------------------------------------------------


class DriftDetected(Event):
    """A streaming detector fired; ``correlation_id`` names the incident for the whole loop."""

    event_type = "drift.detected.v1"

    version: int = Field(ge=1)
    incident_id: str
    detector: str = Field(description="e.g. adwin")
    feature: str = Field(description="an input feature, or __error__ for the model's error stream")
    statistic: float
    threshold: float | None = None
    reference_value: float | None = None
    current_value: float | None = None
    window_size: int = Field(ge=0)
    observations: int = Field(ge=0, description="points seen by the detector since reset")
    detected_at: datetime
    attempt: int = Field(
        default=1,
        ge=1,
        description="1 when the incident opens; n for its (n-1)-th re-emission while it stays "
        "open and the drift persists (same correlation id, new event id)",
    )
    onset_at: datetime | None = Field(
        default=None,
        description="when the incident was first detected (the same on every re-emission): a "
        "retrain takes the labelled rows predicted since then, a growing window per attempt",
    )


class ModelPolicyChanged(Event):
    """A model's policy has a new revision in the registry (``GET /models/{name}/policy``):
    the trainer, the deployer and the monitor read it again. It names the revision only; the
    registry holds the policy."""

    event_type = "model.policy_changed.v1"

    revision: int = Field(ge=1)
    actor: str = Field(max_length=200)
    reason: str = Field(default="", max_length=2000)


class IncidentUpdated(Event):
    """A drift incident changed state, with the numbers behind the change. Its correlation id
    is the incident id (the whole loop's); ``attempt`` counts the retrains requested so far."""

    event_type = "incident.updated.v1"

    incident_id: str = Field(max_length=200)
    version: int | None = Field(default=None, ge=1, description="the serving version then")
    state: IncidentState
    attempt: int = Field(ge=1)
    reason: str = Field(max_length=2000)
    baseline_accuracy: float | None = Field(
        default=None, ge=0, le=1, description="the serving model's accuracy before the drift"
    )
    live_accuracy: float | None = Field(default=None, ge=0, le=1)
    live_points: int = Field(default=0, ge=0, description="labelled points live_accuracy is on")
    metric: Literal["accuracy", "rmse"] | None = Field(
        default=None,
        description="what recovery is judged on: accuracy (classification, higher is better; "
        "then baseline_accuracy and live_accuracy are filled too) or rmse (regression, lower "
        "is better)",
    )
    baseline_value: float | None = Field(
        default=None, ge=0, description="the serving model's metric before the drift"
    )
    live_value: float | None = Field(
        default=None, ge=0, description="the serving model's metric over live_points"
    )
    open: bool = Field(description="false once the incident is closed (recovered, resolved)")


class DataQualityAlert(Event):
    event_type = "data_quality.alert.v1"

    version: int | None = None
    check: str
    feature: str | None = None
    count: int = Field(ge=0)
    examples: list[FiniteJSON] = Field(default_factory=list)
    detail: str = ""


ALL_EVENTS: tuple[type[Event], ...] = (
    TrainingRequested,
    ModelTrained,
    ModelRegistered,
    ModelEvaluated,
    ModelPromoted,
    ModelRolledBack,
    ModelRolloutChanged,
    ModelRollbackRequested,
    ModelLoadFailed,
    ScoringRequested,
    PredictionMade,
    ScoringFailed,
    LabelObserved,
    BatchScoringRequested,
    BatchScoringCompleted,
    DriftDetected,
    DataQualityAlert,
    ModelPolicyChanged,
    IncidentUpdated,
)

EVENTS_BY_TYPE: dict[str, type[Event]] = {cls.event_type: cls for cls in ALL_EVENTS}
# The events other services act on (move a champion, retrain, roll back, judge a shadow): their
# producer signs them and consumers verify it (modelbus_platform.signing). The rest come from
# upstream (open to whoever the Kafka ACLs let write) or only inform.
CONTROL_EVENTS: tuple[type[Event], ...] = (
    ModelTrained,
    ModelRegistered,
    ModelEvaluated,
    ModelPromoted,
    ModelRolledBack,
    ModelRolloutChanged,
    ModelRollbackRequested,
    ModelLoadFailed,
    ScoringFailed,
    DriftDetected,
    ModelPolicyChanged,
    IncidentUpdated,
)
