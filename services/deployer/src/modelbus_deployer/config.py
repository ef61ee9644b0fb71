"""The deployer's settings: promotion policy defaults plus per-model overrides.

Built once at start-up from ``MODELBUS_*`` environment variables; ``MODELBUS_POLICIES`` is JSON,
e.g. ``{"churn": {"promotion_margin": 0.02, "primary_metric": "log_loss"}}``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from modelbus_platform.settings import ServiceSettings

from .domain import MetricName, Policy


class ModelPolicy(BaseModel):
    """Per-model overrides; a field left unset takes the service-wide default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    primary_metric: MetricName | None = Field(
        default=None, description="metric that decides promotion (auc, accuracy, log_loss, brier)"
    )
    promotion_margin: float | None = Field(
        default=None, ge=0, description="improvement over the champion required to promote"
    )
    min_primary_metric: float | None = Field(
        default=None,
        description="absolute threshold for a first model (a maximum if lower-is-better)",
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


class DeployerSettings(ServiceSettings):
    service_name: str = Field(default="deployer", description="name in logs, metrics, events")
    http_port: int = Field(default=8003, ge=0, le=65535, description="HTTP API port")

    consumer_group: str = Field(
        default="deployer", description="Kafka consumer group for ModelRegistered"
    )
    primary_metric: MetricName = Field(
        default="auc",
        description="metric that decides promotion; auc/accuracy higher is better, "
        "log_loss/brier lower is better",
    )
    promotion_margin: float = Field(
        default=0.01,
        ge=0,
        description="the challenger must beat the champion by at least this on the primary "
        "metric, on the same hold-out",
    )
    min_primary_metric: float = Field(
        default=0.6,
        description="absolute threshold on the primary metric for a first model (no champion); "
        "a maximum when the metric is lower-is-better",
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
    policies: dict[str, ModelPolicy] = Field(
        default_factory=dict,
        description="per-model overrides keyed by model name (JSON in MODELBUS_POLICIES)",
    )

    def default_policy(self) -> Policy:
        return Policy(
            primary_metric=self.primary_metric,
            promotion_margin=self.promotion_margin,
            min_primary_metric=self.min_primary_metric,
            min_holdout_rows=self.min_holdout_rows,
            latency_budget_ms=self.latency_budget_ms,
            latency_samples=self.latency_samples,
        )

    def policy_for(self, model_name: str) -> Policy:
        """The effective policy for one model: defaults overlaid with its overrides."""
        base = self.default_policy()
        override = self.policies.get(model_name)
        if override is None:
            return base
        return base.with_overrides(override.model_dump(exclude_none=True))
