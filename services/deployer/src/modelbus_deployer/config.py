"""The deployer's settings: promotion policy defaults plus per-model overrides.

Built once at start-up from ``MODELBUS_*`` environment variables; ``MODELBUS_POLICIES`` is JSON,
e.g. ``{"churn": {"promotion_margin": 0.02, "primary_metric": "auc"}}``.
"""

from __future__ import annotations

from pydantic import Field

from modelbus_contracts.policy import Fraction, MetricName, PromotionPolicy, RolloutPolicy
from modelbus_platform.settings import ServiceSettings

from .domain import Policy

ModelPolicy = PromotionPolicy  # the per-model overrides (MODELBUS_POLICIES), in contracts


class DeployerSettings(ServiceSettings):
    service_name: str = Field(default="deployer", description="name in logs, metrics, events")
    http_port: int = Field(default=8003, ge=0, le=65535, description="HTTP API port")

    consumer_group: str = Field(
        default="deployer", description="Kafka consumer group for ModelRegistered"
    )
    primary_metric: MetricName | None = Field(
        default=None,
        description="metric that decides promotion; unset: the task's default, log_loss for a "
        "classifier and rmse for a regression. log_loss/brier (classification) and rmse/mae "
        "(regression), lower is better, are compared row by row on the same hold-out by a "
        "one-sided paired test, against the champion or, for a first model, against the "
        "hold-out's no-skill prior (base rate, class frequencies, mean); auc (binary), "
        "macro_auc (multiclass) and accuracy, higher is better, by the margin alone (set one "
        "when you choose them). A metric that does not apply to the model's task rejects it",
    )
    promotion_margin: float = Field(
        default=0.0,
        ge=0,
        description="the challenger must beat the champion by at least this on the primary "
        "metric, on the same hold-out",
    )
    significance: float = Field(
        default=0.05,
        gt=0,
        lt=1,
        description="one-sided level of the paired test on log_loss/brier/rmse/mae: noise must "
        "not promote",
    )
    min_primary_metric: float = Field(
        default=0.6,
        description="auc/macro_auc/accuracy only (higher is better): minimum for a first model "
        "(no champion). With log_loss, brier, rmse or mae, whose scale depends on the data, it "
        "does not apply: a first model must beat the hold-out's no-skill prior by the paired test",
    )
    min_holdout_rows: int = Field(
        default=100, ge=1, description="smallest hold-out a promotion decision may rest on"
    )
    latency_budget_ms: float = Field(
        default=5.0, gt=0, description="p99 of single-row predict_proba must be under this, ms"
    )
    latency_samples: int = Field(
        default=200, ge=1, description="single-row predictions timed for the latency gate"
    )
    require_approval: bool = Field(
        default=False, description="a passing verdict waits for POST /decisions/.../approve"
    )
    rollout: RolloutPolicy = Field(
        default="immediate",
        description="immediate: promote at once; shadow: score in shadow first; canary: "
        "route growing fractions of traffic to the challenger first",
    )
    shadow_min_predictions: int = Field(
        default=500, ge=1, description="shadow predictions before shadow vs champion is judged"
    )
    canary_steps: list[Fraction] = Field(
        default_factory=lambda: [0.1, 0.5],
        min_length=1,
        description="canary traffic fractions, in order; after the last step: promote",
    )
    canary_step_predictions: int = Field(
        default=500, ge=1, description="canary predictions each step is held for"
    )
    min_live_predictions: int = Field(
        default=100, ge=1, description="live predictions before a rate or p99 rule may fire"
    )
    min_agreement: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="shadow agreement with the champion (the same class; a regression: values "
        "within 10% of the champion's or within the hold-out RMSE): a floor that catches a "
        "broken model, not a quality signal (a better model disagrees where the champion is "
        "wrong); quality is judged on labelled live accuracy, RMSE or MAE against the champion's",
    )
    max_shadow_error_rate: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="share of shadow requests whose shadow raised (ScoringFailed served_by="
        "shadow) over compared + failed ones, max; a shadow that fails shadow_min_predictions "
        "times without one answer fails too",
    )
    max_fallback_rate: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="share of live predictions answered by the fallback (the model raised), max",
    )
    live_latency_p99_ms: float = Field(
        default=250.0, gt=0, description="p99 of live PredictionMade.latency_ms, maximum"
    )
    min_labels: int = Field(
        default=200, ge=1, description="labels joined before live performance is judged"
    )
    accuracy_tolerance: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="live accuracy may trail the hold-out accuracy by at most this (absolute); "
        "a regression's live RMSE (MAE) may exceed the hold-out's by at most this fraction",
    )
    rollback_watch_predictions: int = Field(
        default=2000,
        ge=1,
        description="champion predictions watched after a promotion for automatic rollback",
    )
    watch_group: str = Field(
        default="deployer-watch",
        description="Kafka consumer group (batch) for PredictionMade, LabelObserved, "
        "ModelLoadFailed, ScoringFailed",
    )
    live_checkpoint_s: float = Field(
        default=1.0,
        ge=0,
        description="checkpoint the live windows to MongoDB at most this often (0: after every "
        "batch); always on shutdown. A crash loses at most this much counting, never doubles it",
    )
    live_replay_guard: int = Field(
        default=5000,
        ge=1,
        description="event ids kept per checkpointed window to skip a batch Kafka re-delivers "
        "after a crash; must exceed the events of one batch (max_records 1000)",
    )
    active_refresh_s: float = Field(
        default=1.0, gt=0, description="how stale the watcher's view of live stages may be"
    )
    policies: dict[str, ModelPolicy] = Field(
        default_factory=dict,
        description="per-model overrides keyed by model name (JSON in MODELBUS_POLICIES)",
    )

    def default_policy(self) -> Policy:
        return Policy(
            primary_metric=self.primary_metric,
            promotion_margin=self.promotion_margin,
            significance=self.significance,
            min_primary_metric=self.min_primary_metric,
            min_holdout_rows=self.min_holdout_rows,
            latency_budget_ms=self.latency_budget_ms,
            latency_samples=self.latency_samples,
            require_approval=self.require_approval,
            rollout=self.rollout,
            shadow_min_predictions=self.shadow_min_predictions,
            canary_steps=tuple(self.canary_steps),
            canary_step_predictions=self.canary_step_predictions,
            min_live_predictions=self.min_live_predictions,
            min_agreement=self.min_agreement,
            max_shadow_error_rate=self.max_shadow_error_rate,
            max_fallback_rate=self.max_fallback_rate,
            live_latency_p99_ms=self.live_latency_p99_ms,
            min_labels=self.min_labels,
            accuracy_tolerance=self.accuracy_tolerance,
            rollback_watch_predictions=self.rollback_watch_predictions,
        )

    def policy_for(self, model_name: str, live: PromotionPolicy | None = None) -> Policy:
        """The effective policy for one model: the defaults, overlaid with its settings
        overrides (``MODELBUS_POLICIES``), overlaid with its live policy from the registry."""
        policy = self.default_policy()
        for override in (self.policies.get(model_name), live):
            if override is not None:
                policy = policy.with_overrides(override.model_dump(exclude_none=True))
        return policy
