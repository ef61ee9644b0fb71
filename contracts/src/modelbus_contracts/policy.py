"""Per-model policies: what the trainer, the deployer and the monitor do for one model.

A policy is stored and versioned by the registry (``GET``/``PUT /models/{name}/policy``, each
change a new revision with an audit record and a ``ModelPolicyChanged`` event) and read by the
services without a restart. Every field is optional: unset, the service's own setting (its
``MODELBUS_*`` environment variable) applies. Defined once here; the registry validates a
``PUT`` against it and the services read it with it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .events import Task

MetricName = Literal["auc", "accuracy", "log_loss", "brier", "macro_auc", "rmse", "mae"]
RolloutPolicy = Literal["immediate", "shadow", "canary"]
FeatureDetector = Literal["adwin", "kswin", "page_hinkley"]
ErrorDetector = Literal["adwin", "ddm"]
Fraction = Annotated[float, Field(gt=0, lt=1)]
ERROR_STREAM = "__error__"


class PromotionPolicy(BaseModel):
    """The deployer's gates and rollout for one model; a field left unset takes the
    service-wide default (``MODELBUS_*`` settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    primary_metric: MetricName | None = Field(
        default=None,
        description="metric that decides promotion; unset: log_loss for a classifier, rmse for "
        "a regression. Classification: log_loss, brier, auc (binary), macro_auc (multiclass), "
        "accuracy; regression: rmse, mae. One that does not apply to the model's task rejects it",
    )
    promotion_margin: float | None = Field(
        default=None, ge=0, description="improvement over the champion required to promote"
    )
    significance: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="one-sided level of the paired test (log_loss, brier, rmse, mae): the "
        "challenger's gain must be significant at it",
    )
    min_primary_metric: float | None = Field(
        default=None,
        description="floor for a first model on a higher-is-better metric (auc, macro_auc, "
        "accuracy); with log_loss, brier, rmse or mae a first model must instead beat the "
        "no-skill prior (base rate, class frequencies, mean) by the paired test",
    )
    min_holdout_rows: int | None = Field(
        default=None, ge=1, description="smallest hold-out a decision may rest on"
    )
    latency_budget_ms: float | None = Field(
        default=None, gt=0, description="p99 budget for a single-row prediction, milliseconds"
    )
    latency_samples: int | None = Field(
        default=None, ge=1, description="single-row predictions timed for the latency gate"
    )
    require_approval: bool | None = Field(
        default=None, description="a passing verdict waits for a human approve/reject"
    )
    rollout: RolloutPolicy | None = Field(
        default=None, description="immediate | shadow | canary exposure before promotion"
    )
    shadow_min_predictions: int | None = Field(
        default=None, ge=1, description="shadow predictions before shadow vs champion is judged"
    )
    canary_steps: list[Fraction] | None = Field(
        default=None, min_length=1, description="canary traffic fractions, in order"
    )
    canary_step_predictions: int | None = Field(
        default=None, ge=1, description="canary predictions each step is held for"
    )
    min_live_predictions: int | None = Field(
        default=None, ge=1, description="live predictions before a rate or p99 rule may fire"
    )
    min_agreement: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="shadow agreement with the champion, a floor (same class; regression: "
        "values within a tolerance)",
    )
    max_shadow_error_rate: float | None = Field(
        default=None, ge=0, le=1, description="shadow exceptions over compared + failed, max"
    )
    max_fallback_rate: float | None = Field(
        default=None, ge=0, le=1, description="fallback (exception) share of live traffic, max"
    )
    live_latency_p99_ms: float | None = Field(
        default=None, gt=0, description="p99 of live latency_ms, maximum"
    )
    min_labels: int | None = Field(
        default=None, ge=1, description="labels before live accuracy is judged"
    )
    accuracy_tolerance: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="live accuracy may trail hold-out accuracy by this (absolute); for a "
        "regression, live RMSE/MAE may exceed the hold-out's by this fraction",
    )
    rollback_watch_predictions: int | None = Field(
        default=None, ge=1, description="champion predictions watched after a promotion"
    )


class TrainingSchedule(BaseModel):
    """When (``cron``, UTC) and on what data a model is retrained on a schedule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cron: str = Field(
        max_length=200, description="cron expression in UTC, e.g. '0 3 * * *' = daily at 03:00"
    )
    dataset_uri: str | None = Field(
        default=None,
        max_length=1000,
        description="CSV in object storage; default: the model's collected feedback",
    )
    since_hours: float | None = Field(
        default=None, gt=0, description="feedback only from the last N hours (no dataset_uri)"
    )
    params: dict[str, Any] = Field(default_factory=dict, description="training params of the run")


class TrainingPolicy(BaseModel):
    """How the model is (re)trained: the family and its params (as a run's ``params``), and
    its retraining schedule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: str | None = Field(
        default=None,
        max_length=100,
        description="auto (model choice, the default), logreg, sklearn, river or python",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description='the family\'s params, e.g. {"estimator": "random_forest"}',
    )
    schedule: TrainingSchedule | None = Field(
        default=None, description="retrain on this schedule (over MODELBUS_SCHEDULES)"
    )
    task: Task | None = Field(
        default=None,
        description="binary, multiclass or regression; default: the champion's, else inferred "
        "from the labels",
    )


class MonitoringPolicy(BaseModel):
    """How drift is watched and when an incident counts as recovered."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    detectors: dict[str, FeatureDetector | ErrorDetector] | None = Field(
        default=None,
        max_length=1000,
        description='per feature, "*" for every input feature, "__error__" for the error '
        "stream; applies from the next serving version",
    )
    recovery_tolerance: float | None = Field(default=None, ge=0, le=1)
    recovery_min_points: int | None = Field(default=None, ge=30)
    incident_max_attempts: int | None = Field(default=None, ge=1)

    @field_validator("detectors")
    @classmethod
    def _detector_fits_its_stream(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for stream, detector in (value or {}).items():
            error = stream == ERROR_STREAM
            allowed = ErrorDetector.__args__ if error else FeatureDetector.__args__  # type: ignore[attr-defined]
            if detector not in allowed:
                kind = "the error stream" if error else f"feature {stream!r}"
                raise ValueError(f"{detector!r} cannot watch {kind}: one of {list(allowed)}")
        return value


class ArtifactPolicy(BaseModel):
    """Which artifacts may be loaded: formats that run code when loaded (pickles: the river and
    python families) only if a person allowed them here (setting a policy needs ``admin``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow_pickle: bool = Field(
        default=False,
        description="train and load pickled artifacts (modelbus.river.v1, modelbus.pickle.v1), "
        "and then only with a valid signature of a trusted service; false: they are refused",
    )


class ModelPolicyDoc(BaseModel):
    """One model's policy, as stored and as ``PUT``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    training: TrainingPolicy = Field(default_factory=TrainingPolicy)
    promotion: PromotionPolicy = Field(default_factory=PromotionPolicy)
    monitoring: MonitoringPolicy = Field(default_factory=MonitoringPolicy)
    artifacts: ArtifactPolicy = Field(default_factory=ArtifactPolicy)


class PolicyUpdate(BaseModel):
    """Compare-and-set: the new policy replaces revision ``expected_revision`` (0: none yet)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: ModelPolicyDoc
    expected_revision: int = Field(ge=0, description="the revision it replaces (0: none yet)")
    reason: str = Field(min_length=1, max_length=2000)


class PolicyView(BaseModel):
    """A stored revision of a model's policy (revision 0: none set, every default applies)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    model_name: str
    revision: int = Field(ge=0)
    policy: ModelPolicyDoc = Field(default_factory=ModelPolicyDoc)
    updated_at: datetime | None = None
    updated_by: str | None = None
    reason: str = ""
