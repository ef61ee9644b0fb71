"""The monitor's settings: detector sensitivity, thresholds, cooldowns and the join buffer."""

from __future__ import annotations

from pydantic import Field

from modelbus_platform.settings import ServiceSettings


class MonitorSettings(ServiceSettings):
    service_name: str = Field(default="monitor", description="name in logs, metrics, events")
    http_port: int = Field(default=8005, ge=0, le=65535, description="HTTP API port")

    adwin_delta: float = Field(
        default=0.002, gt=0, lt=1, description="ADWIN confidence: smaller means fewer false alarms"
    )
    error_min_observations: int = Field(
        default=100, ge=0, description="no error-stream alarm before this many joined points"
    )
    feature_drift_enabled: bool = Field(
        default=True, description="run one ADWIN per input feature (standardised by the reference)"
    )
    feature_min_observations: int = Field(
        default=300, ge=0, description="no feature alarm before this many points since reset"
    )
    drift_cooldown_s: float = Field(
        default=60.0,
        ge=0,
        description="quiet time after an incident closes; also the quality cooldown",
    )
    join_max_pending: int = Field(
        default=100_000, ge=1, description="unmatched predictions (and labels) kept; oldest evicted"
    )
    join_max_wait_s: float = Field(
        default=3600.0, gt=0, description="an unmatched prediction or label expires after this"
    )
    registry_retry_s: float = Field(
        default=30.0, ge=0, description="min delay between registry look-ups for a missing model"
    )
