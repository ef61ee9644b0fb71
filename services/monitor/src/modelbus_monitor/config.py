"""The monitor's settings (detectors, confirmation tests, thresholds, cooldowns, re-triggering,
checkpoints, daily windows, the join buffer) and the per-model configuration built from them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from pydantic import Field, field_validator

from modelbus_platform.settings import ServiceSettings

from .detectors import (
    DETECTORS_ERROR,
    DETECTORS_INPUT,
    ERROR_STREAM,
    Kind,
    Stream,
    StreamConfig,
)


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
        description="an open incident's next retrain is requested at most this long after the "
        "last when no verdict came (sooner after a rejection); without labelled pre-drift data, "
        "its DriftDetected is re-emitted this often while the drift persists (0 = never)",
    )
    recovery_tolerance: float = Field(
        default=0.03,
        ge=0,
        le=1,
        description="an incident is recovered when the serving model's live accuracy is within "
        "this of its pre-drift accuracy",
    )
    recovery_min_points: int = Field(
        default=300,
        ge=30,
        description="labelled points a serving version is judged on for recovery; also the new "
        "labelled points an incident's next retrain waits for (the ladder's step)",
    )
    incident_max_attempts: int = Field(
        default=5,
        ge=1,
        description="retrains of one incident before it needs a human (no more are requested)",
    )
    outlier_z: float = Field(
        default=6.0,
        gt=0,
        description="robust z-score (median, IQR) above which a value is an outlier",
    )
    checkpoint_s: float = Field(
        default=5.0,
        ge=0,
        description="checkpoint period of the detectors, join buffers and daily windows (0 = "
        "only on shutdown); the telemetry offsets are committed with each checkpoint, so this "
        "is how far the group's commits trail what it has read",
    )
    tick_s: float = Field(
        default=5.0,
        gt=0,
        description="period of the background work (re-trigger, checkpoint, daily)",
    )
    daily_enabled: bool = Field(default=True, description="keep daily windows per feature")
    category_window: int = Field(
        default=1000,
        ge=50,
        description="values per chi-square window of a category feature (tumbling windows, "
        "each tested once at confirm_alpha; see categories.py for the power this gives)",
    )
    recovery_rmse_tolerance: float = Field(
        default=0.1,
        ge=0,
        description="a regression's incident is recovered when its live RMSE is at most this "
        "fraction above its pre-drift RMSE (RMSE over 300 points has a relative standard "
        "error of about 1/sqrt(2 * 300) = 0.04 for normal residuals: 0.1 is ~2.5 of them)",
    )
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


@dataclass(frozen=True)
class DetectorConfig:
    """What one model's monitor runs with (``service.detector_config`` builds it from the
    settings): the kernel's detectors, join, quality and daily windows, and the policy's
    cooldown and re-trigger period."""

    delta: float = 0.002
    error_min_observations: int = 100
    feature_drift_enabled: bool = True
    feature_min_observations: int = 300
    cooldown_s: float = 60.0
    join_max_pending: int = 100_000
    join_max_wait_s: float = 3600.0
    producer: str = "monitor"
    feature_detector: str = "adwin"
    error_detector: str = "adwin"
    scale_drift_enabled: bool = True
    scale_detector: str = "cusum"
    overrides: dict[str, dict[str, str]] = field(default_factory=dict)
    alpha: float = 0.001
    reference_size: int = 1000
    window_size: int = 2000
    confirm_patience: int = 1000
    retrigger_s: float = 120.0
    recovery_tolerance: float = 0.03
    recovery_min_points: int = 300
    incident_max_attempts: int = 5
    outlier_z: float = 6.0
    quality_max_examples: int = 5
    daily_enabled: bool = True
    category_window: int = 1000
    recovery_rmse_tolerance: float = 0.1

    def detector_for(self, model: str, feature: str) -> str:
        """Per model and feature: ``overrides[model][feature]``, then ``overrides[model]["*"]``
        (inputs only), then the service default."""
        chosen = self.overrides.get(model, {})
        if feature == ERROR_STREAM:
            return chosen.get(ERROR_STREAM, self.error_detector)
        return chosen.get(feature, chosen.get("*", self.feature_detector))

    def stream(self, model: str, feature: str, kind: Kind) -> Stream:
        base = StreamConfig(
            delta=self.delta,
            alpha=self.alpha,
            reference_size=self.reference_size,
            window_size=self.window_size,
            confirm_patience=self.confirm_patience,
        )
        if kind == "error":
            cfg = replace(
                base,
                detector=self.detector_for(model, ERROR_STREAM),
                min_observations=self.error_min_observations,
                direction="up",
            )
        else:
            detector = self.scale_detector if kind == "scale" else self.detector_for(model, feature)
            cfg = replace(base, detector=detector, min_observations=self.feature_min_observations)
        return Stream(feature, kind, cfg)
