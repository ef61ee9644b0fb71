"""Pure streaming detectors: River ADWIN on the error stream and on standardised features,
plus the first data-quality checks (missing, non-finite, out of the widened reference range)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from river import drift

from modelbus_contracts import FeatureStats

ERROR_STREAM = "__error__"
Direction = Literal["up", "both"]


@dataclass(frozen=True)
class DriftAlarm:
    """One ADWIN change point with the numbers behind it."""

    detector: str
    feature: str
    statistic: float
    reference_value: float
    current_value: float
    threshold: float
    window_size: int
    observations: int

    def evidence(self) -> dict[str, Any]:
        return {
            "detector": self.detector,
            "feature": self.feature,
            "statistic": self.statistic,
            "reference_value": self.reference_value,
            "current_value": self.current_value,
            "threshold": self.threshold,
            "window_size": self.window_size,
            "observations": self.observations,
        }


class AdwinDetector:
    """ADWIN on one stream. An alarm needs ``min_observations`` points since reset and, for an
    ``up`` detector, a mean that went up (estimation after the cut above the one before)."""

    def __init__(
        self, feature: str, *, delta: float, min_observations: int, direction: Direction
    ) -> None:
        self.feature = feature
        self.delta = delta
        self.min_observations = min_observations
        self.direction = direction
        self.adwin = drift.ADWIN(delta=delta)
        self.observations = 0
        self.changes = 0
        self.alarms = 0

    def update(self, value: float) -> DriftAlarm | None:
        before = float(self.adwin.estimation)
        self.adwin.update(value)
        self.observations += 1
        if not self.adwin.drift_detected:
            return None
        self.changes += 1
        after = float(self.adwin.estimation)
        if self.observations < self.min_observations:
            return None
        if self.direction == "up" and after <= before:
            return None
        self.alarms += 1
        return DriftAlarm(
            detector="adwin",
            feature=self.feature,
            statistic=after,
            reference_value=before,
            current_value=after,
            threshold=self.delta,
            window_size=int(self.adwin.width),
            observations=self.observations,
        )

    def state(self) -> dict[str, Any]:
        return {
            "observations": self.observations,
            "estimation": float(self.adwin.estimation),
            "width": int(self.adwin.width),
            "changes": self.changes,
            "alarms": self.alarms,
            "min_observations": self.min_observations,
            "direction": self.direction,
        }


def standardise(value: float, stats: FeatureStats) -> float:
    return (value - stats.mean) / (stats.std if stats.std > 0 else 1.0)


@dataclass(frozen=True)
class QualityIssue:
    check: Literal["missing", "non_finite", "out_of_range"]
    feature: str
    value: float | None
    low: float | None = None
    high: float | None = None


def quality_issues(
    features: dict[str, float], reference: dict[str, FeatureStats]
) -> list[QualityIssue]:
    """Missing or non-finite features, and values outside [min - 3 std, max + 3 std]."""
    issues: list[QualityIssue] = []
    for name, stats in reference.items():
        value = features.get(name)
        if value is None:
            issues.append(QualityIssue("missing", name, None))
        elif not isinstance(value, int | float) or not math.isfinite(value):
            issues.append(QualityIssue("non_finite", name, None))
        else:
            low, high = stats.min - 3 * stats.std, stats.max + 3 * stats.std
            if not low <= value <= high:
                issues.append(QualityIssue("out_of_range", name, float(value), low, high))
    return issues


@dataclass
class QualityTally:
    """Issue counts since the last alert, with up to five examples."""

    counts: dict[str, int] = field(default_factory=dict)
    by_feature: dict[str, int] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)
    max_examples: int = 5

    def add(self, prediction_id: str, issues: list[QualityIssue]) -> None:
        for issue in issues:
            self.counts[issue.check] = self.counts.get(issue.check, 0) + 1
            self.by_feature[issue.feature] = self.by_feature.get(issue.feature, 0) + 1
            if len(self.examples) < self.max_examples:
                example = {"prediction_id": prediction_id, "check": issue.check}
                example |= {"feature": issue.feature, "value": issue.value}
                example |= {"low": issue.low, "high": issue.high}
                self.examples.append(example)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def top(self, counts: dict[str, int]) -> str:
        return max(sorted(counts), key=lambda k: counts[k])
