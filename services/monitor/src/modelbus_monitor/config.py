"""The monitor's settings: detectors, confirmation tests, thresholds, cooldowns, re-triggering,
checkpoints, daily windows and the join buffer."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from modelbus_platform.settings import ServiceSettings

from .detectors import DETECTORS_ERROR, DETECTORS_INPUT, ERROR_STREAM


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

    feature_detector: Literal["adwin", "kswin", "page_hinkley"] = Field(
        default="adwin", description="streaming detector on each standardised input feature"
    )
    error_detector: Literal["adwin", "ddm"] = Field(
        default="adwin", description="streaming detector on the 0/1 error stream"
    )
    detector_overrides: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description='per model and feature, e.g. {"churn": {"x1": "kswin", "*": "page_hinkley", '
        '"__error__": "ddm"}} (JSON in MODELBUS_DETECTOR_OVERRIDES)',
    )
    scale_drift_enabled: bool = Field(
        default=True, description="also watch each feature's variance (|z| per point)"
    )
    scale_detector: Literal["cusum", "adwin"] = Field(
        default="cusum",
        description="detector on |z|: a two-sided variance CUSUM (doubling / halving) or ADWIN",
    )
    confirm_alpha: float = Field(
        default=0.001,
        gt=0,
        lt=1,
        description="a streaming alarm opens an incident only if the batch test (KS, or the "
        "one-sided two-proportion z-test on errors) rejects at this level",
    )
    reference_size: int = Field(
        default=1000, ge=30, description="first points per stream since reset kept as reference"
    )
    window_size: int = Field(
        default=2000, ge=100, description="recent points kept per stream (tests, checkpoints)"
    )
    confirm_patience: int = Field(
        default=1000, ge=1, description="points a streaming alarm may wait for confirmation"
    )
    incident_retrigger_s: float = Field(
        default=120.0,
        ge=0,
        description="re-emit an open incident's DriftDetected this often while the drift "
        "persists (0 = never)",
    )
    outlier_z: float = Field(
        default=6.0,
        gt=0,
        description="robust z-score (median, IQR) above which a value is an outlier",
    )
    checkpoint_s: float = Field(
        default=60.0, ge=0, description="detector checkpoint period (0 = only on shutdown)"
    )
    tick_s: float = Field(
        default=5.0,
        gt=0,
        description="period of the background work (re-trigger, checkpoint, daily)",
    )
    daily_enabled: bool = Field(default=True, description="keep daily windows per feature")
    psi_warn: float = Field(default=0.1, ge=0, description="daily PSI at or above: warn")
    psi_drift: float = Field(default=0.25, ge=0, description="daily PSI at or above: drift")

    @field_validator("detector_overrides")
    @classmethod
    def _known_detectors(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for model, features in value.items():
            for feature, name in features.items():
                allowed = DETECTORS_ERROR if feature == ERROR_STREAM else DETECTORS_INPUT
                if name not in allowed:
                    raise ValueError(f"{model}/{feature}: detector {name!r} not in {allowed}")
        return value
