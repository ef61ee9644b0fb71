"""Per-model monitoring state, pure: the join, the detectors, incidents and the alert rules.

Rules: only predictions served by the champion (or its fallback) of the CURRENT serving version
reach the detectors; at most one open incident per model; while it is open further alarms are
counted but emit nothing; after it closes (a promotion or rollback) a cooldown applies.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from modelbus_contracts import DataQualityAlert, DriftDetected, FeatureStats

from .detectors import (
    ERROR_STREAM,
    AdwinDetector,
    DriftAlarm,
    QualityTally,
    quality_issues,
    standardise,
)
from .join import JoinedPair, Joiner, LabelPoint, PredictionPoint

SERVED_BY_MONITORED = frozenset({"champion", "fallback"})
Disposition = Literal["opened", "suppressed_open", "suppressed_cooldown"]


@dataclass(frozen=True)
class DetectorConfig:
    delta: float = 0.002
    error_min_observations: int = 100
    feature_drift_enabled: bool = True
    feature_min_observations: int = 300
    cooldown_s: float = 60.0
    join_max_pending: int = 100_000
    join_max_wait_s: float = 3600.0
    producer: str = "monitor"


@dataclass
class Incident:
    """One drift incident; its id is the correlation id of the whole retraining loop."""

    incident_id: str
    model_name: str
    version: int
    opened_at: datetime
    causation_id: str
    evidence: dict[str, Any]
    event: dict[str, Any] = field(default_factory=dict)
    status: Literal["open", "closed"] = "open"
    published: bool = False
    suppressed_alarms: int = 0
    closed_at: datetime | None = None
    closed_by_version: int | None = None
    closed_by_event_id: str | None = None
    close_reason: str | None = None

    def close(self, now: datetime, version: int, event_id: str | None, reason: str) -> None:
        self.status = "closed"
        self.closed_at = now
        self.closed_by_version = version
        self.closed_by_event_id = event_id
        self.close_reason = reason

    def summary(self) -> dict[str, Any]:
        return {
            "incident_id": self.incident_id,
            "version": self.version,
            "opened_at": self.opened_at,
            "evidence": self.evidence,
            "suppressed_alarms": self.suppressed_alarms,
            "published": self.published,
        }

    def drift_event(self) -> DriftDetected:
        return DriftDetected.model_validate(self.event)


@dataclass
class Outcome:
    """What one observation changed; the service turns it into writes, events and metrics."""

    joined: JoinedPair | None = None
    ignored: str | None = None
    alarms: list[tuple[DriftAlarm, Disposition]] = field(default_factory=list)
    opened: Incident | None = None
    quality: DataQualityAlert | None = None
    evicted: dict[str, int] = field(default_factory=dict)


class ModelMonitor:
    """Everything the monitor knows about one model."""

    def __init__(self, model_name: str, config: DetectorConfig) -> None:
        self.model_name = model_name
        self.config = config
        self.serving_version: int | None = None
        self.reference: dict[str, FeatureStats] = {}
        self.joiner = Joiner(config.join_max_pending, config.join_max_wait_s)
        self.incident: Incident | None = None
        self.cooldown_until: datetime | None = None
        self.quality_next_at: datetime | None = None
        self.counts: Counter[str] = Counter()
        self._reset_detectors()

    # -- serving version ----------------------------------------------------------------------

    def adopt(self, version: int | None, reference: dict[str, FeatureStats] | None) -> None:
        """Start-up: learn the serving version without touching incidents."""
        if version != self.serving_version:
            self.serving_version = version
            self._reset_detectors()
        if reference:
            self.set_reference(reference)

    def set_reference(self, reference: dict[str, FeatureStats]) -> None:
        """Turn the feature detectors on once the serving version's reference is known."""
        self.reference = dict(reference)
        if self.config.feature_drift_enabled:
            self.features = {name: self._feature_detector(name) for name in sorted(reference)}

    def serve(
        self,
        version: int,
        reference: dict[str, FeatureStats] | None,
        now: datetime,
        *,
        event_id: str | None = None,
        occurred_at: datetime | None = None,
        reason: str = "promoted",
    ) -> Incident | None:
        """A promotion or rollback: switch version, reset detectors, close the open incident.

        A promotion that happened before the open incident was opened is stale (a replay) and
        changes nothing. Returns the incident it closed, if any."""
        incident = self.incident
        if incident is not None and occurred_at is not None and occurred_at < incident.opened_at:
            self.counts["stale_promotions"] += 1
            return None
        self.counts["promotions"] += 1
        closed = None
        if incident is not None:
            incident.close(now, version, event_id, reason)
            self.cooldown_until = now + timedelta(seconds=self.config.cooldown_s)
            self.incident, closed = None, incident
        self.serving_version = version
        self.reference = {}
        self._reset_detectors()
        if reference:
            self.set_reference(reference)
        return closed

    def restore_incident(self, incident: Incident) -> None:
        self.incident = incident

    # -- observations -------------------------------------------------------------------------

    def observe_prediction(
        self, point: PredictionPoint, now: datetime, correlation_id: uuid.UUID
    ) -> Outcome:
        outcome = Outcome()
        if self.joiner.knows_prediction(point.prediction_id):
            self.joiner.duplicates += 1
            self.counts["duplicate_predictions"] += 1
            return outcome
        self.counts["predictions"] += 1
        reason = self._ineligible(point)
        if reason is None:
            self.counts["monitored_predictions"] += 1
            self._feed_features(point, now, outcome)
            outcome.quality = self._check_quality(point, now, correlation_id)
        else:
            outcome.ignored = reason
            self.counts[f"ignored_{reason}"] += 1
        self._feed_pair(self.joiner.add_prediction(point, now), now, outcome)
        outcome.evicted = self.joiner.drain_evictions()
        return outcome

    def observe_label(self, point: LabelPoint, now: datetime) -> Outcome:
        self.counts["labels"] += 1
        outcome = Outcome()
        self._feed_pair(self.joiner.add_label(point, now), now, outcome)
        outcome.evicted = self.joiner.drain_evictions()
        return outcome

    def _ineligible(self, point: PredictionPoint) -> str | None:
        if point.served_by not in SERVED_BY_MONITORED:
            return f"served_by_{point.served_by}"
        if self.serving_version is None:
            return "no_serving_version"
        if point.version != self.serving_version:
            return "not_serving_version"
        return None

    def _feed_pair(self, pair: JoinedPair | None, now: datetime, outcome: Outcome) -> None:
        if pair is None:
            return
        outcome.joined = pair
        self.counts["joined"] += 1
        if self._ineligible(pair.prediction) is not None:
            self.counts["pairs_ignored"] += 1  # the prediction itself was counted on arrival
            return
        self.counts["errors_fed"] += 1
        alarm = self.error.update(float(pair.error))
        if alarm is not None:
            self._raise(alarm, pair.tipping_event_id, now, outcome)

    def _feed_features(self, point: PredictionPoint, now: datetime, outcome: Outcome) -> None:
        for name, detector in self.features.items():
            value = point.features.get(name)
            if value is None or not math.isfinite(value):
                continue
            alarm = detector.update(standardise(float(value), self.reference[name]))
            if alarm is not None:
                self._raise(alarm, point.event_id, now, outcome)

    # -- alarms and incidents -----------------------------------------------------------------

    def _raise(
        self, alarm: DriftAlarm, causation_id: uuid.UUID, now: datetime, outcome: Outcome
    ) -> None:
        if self.incident is not None:
            self.incident.suppressed_alarms += 1
            self.counts["suppressed_alarms"] += 1
            outcome.alarms.append((alarm, "suppressed_open"))
        elif self.cooldown_until is not None and now < self.cooldown_until:
            self.counts["suppressed_alarms"] += 1
            outcome.alarms.append((alarm, "suppressed_cooldown"))
        else:
            self.incident = outcome.opened = self._open(alarm, causation_id, now)
            outcome.alarms.append((alarm, "opened"))

    def _open(self, alarm: DriftAlarm, causation_id: uuid.UUID, now: datetime) -> Incident:
        incident_id = uuid.uuid4()
        assert self.serving_version is not None  # only eligible points reach the detectors
        event = DriftDetected(
            producer=self.config.producer,
            correlation_id=incident_id,
            causation_id=causation_id,
            model_name=self.model_name,
            version=self.serving_version,
            incident_id=str(incident_id),
            detected_at=now,
            **alarm.evidence(),
        )
        self.counts["incidents_opened"] += 1
        return Incident(
            incident_id=str(incident_id),
            model_name=self.model_name,
            version=self.serving_version,
            opened_at=now,
            causation_id=str(causation_id),
            evidence=alarm.evidence(),
            event=event.model_dump(mode="json"),
        )

    # -- data quality -------------------------------------------------------------------------

    def _check_quality(
        self, point: PredictionPoint, now: datetime, correlation_id: uuid.UUID
    ) -> DataQualityAlert | None:
        if not self.reference:
            return None
        issues = quality_issues(point.features, self.reference)
        if not issues:
            return None
        self.tally.add(point.prediction_id, issues)
        if self.quality_next_at is not None and now < self.quality_next_at:
            return None
        tally, self.tally = self.tally, QualityTally()
        self.quality_next_at = now + timedelta(seconds=self.config.cooldown_s)
        self.counts["quality_alerts"] += 1
        detail = " ".join(f"{k}={v}" for k, v in sorted(tally.counts.items()))
        by_feature = " ".join(f"{k}={v}" for k, v in sorted(tally.by_feature.items()))
        return DataQualityAlert(
            producer=self.config.producer,
            correlation_id=correlation_id,
            causation_id=point.event_id,
            model_name=self.model_name,
            version=self.serving_version,
            check=tally.top(tally.counts),
            feature=tally.top(tally.by_feature),
            count=tally.total,
            examples=tally.examples,
            detail=f"{detail}; by feature: {by_feature}",
        )

    # -- state --------------------------------------------------------------------------------

    def _feature_detector(self, name: str) -> AdwinDetector:
        cfg = self.config
        return AdwinDetector(
            name, delta=cfg.delta, min_observations=cfg.feature_min_observations, direction="both"
        )

    def _reset_detectors(self) -> None:
        cfg = self.config
        self.error = AdwinDetector(
            ERROR_STREAM,
            delta=cfg.delta,
            min_observations=cfg.error_min_observations,
            direction="up",
        )
        self.features: dict[str, AdwinDetector] = {}
        if self.reference and cfg.feature_drift_enabled:
            self.features = {name: self._feature_detector(name) for name in sorted(self.reference)}
        self.tally = QualityTally()

    def status(self) -> dict[str, Any]:
        incident = self.incident
        return {
            "model_name": self.model_name,
            "serving_version": self.serving_version,
            "reference_features": sorted(self.reference),
            "observations": self.error.observations,
            "joined": self.counts["joined"],
            "error_rate": float(self.error.adwin.estimation) if self.error.observations else None,
            "pending": self.joiner.pending,
            "evicted": dict(self.joiner.evicted),
            "duplicates": self.joiner.duplicates,
            "counts": dict(self.counts),
            "detectors": {
                ERROR_STREAM: self.error.state(),
                **{name: d.state() for name, d in self.features.items()},
            },
            "open_incident": incident.summary() if incident else None,
            "cooldown_until": self.cooldown_until,
        }
