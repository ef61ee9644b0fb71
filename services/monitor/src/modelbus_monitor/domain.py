"""Per-model monitoring state, pure: the join, the drift streams, incidents and the alert rules.

Rules: only predictions served by the champion (or its fallback) of the CURRENT serving version
reach the detectors; at most one open incident per model; while it is open further alarms are
counted but emit nothing, except that every ``retrigger_s`` the incident's DriftDetected is
emitted again (same correlation id, new event id, ``attempt`` + 1) if its stream still differs
from the reference (a rejected challenger must not stall the loop); after it closes (a promotion
or rollback) a cooldown applies.
"""

from __future__ import annotations

import uuid
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from operator import itemgetter
from typing import Any, Literal

import numpy as np

from modelbus_contracts import DataQualityAlert, DriftDetected, FeatureStats

from .daily import DailyBook
from .detectors import ERROR_STREAM, DriftAlarm, Kind, Stream, StreamConfig, update_columns
from .join import JoinedPair, Joiner, LabelPoint, PredictionPoint
from .quality import (
    BatchScreen,
    QualityTally,
    bounds_for,
    feature_matrix,
    quality_issues,
    standardise,
)

SERVED_BY_MONITORED = frozenset({"champion", "fallback"})
_version, _served_by = itemgetter(1), itemgetter(2)  # PredictionPoint fields, in C
Disposition = Literal["opened", "suppressed_open", "suppressed_cooldown"]
HISTORY_EVERY = 50


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
    outlier_z: float = 6.0
    quality_max_examples: int = 5
    daily_enabled: bool = True

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
    attempts: int = 1
    last_emitted_at: datetime | None = None
    emitted_event_ids: list[str] = field(default_factory=list)

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
            "attempts": self.attempts,
            "last_emitted_at": self.last_emitted_at,
        }

    def drift_event(self) -> DriftDetected:
        return DriftDetected.model_validate(self.event)

    def stream_key(self) -> tuple[str, str]:
        feature = str(self.evidence.get("feature", ERROR_STREAM))
        kind = self.evidence.get("kind") or ("error" if feature == ERROR_STREAM else "mean")
        return feature, str(kind)


@dataclass
class Outcome:
    """What one observation changed; the service turns it into writes, events and metrics."""

    joined: JoinedPair | None = None
    ignored: str | None = None
    alarms: list[tuple[DriftAlarm, Disposition]] = field(default_factory=list)
    opened: Incident | None = None
    quality: DataQualityAlert | None = None
    evicted: dict[str, int] = field(default_factory=dict)


class BatchOutcome:
    """What a batch changed: counts (joined, ignored, evicted) for the metrics and the outcomes
    that need the service (alarms, incidents, quality alerts), made only when needed; with
    ``detail`` every point gets its ``Outcome`` with its joined pair and ignored reason."""

    def __init__(self, size: int, *, detail: bool = False) -> None:
        self.size = size
        self.detail = detail
        self.joined = 0
        self.ignored: Counter[str] = Counter()
        self.evicted: Counter[str] = Counter()
        self._outcomes: dict[int, Outcome] = {}

    def at(self, k: int) -> Outcome:
        outcome = self._outcomes.get(k)
        if outcome is None:
            outcome = self._outcomes[k] = Outcome()
        return outcome

    def ignore(self, k: int, reason: str) -> None:
        self.ignored[reason] += 1
        if self.detail:
            self.at(k).ignored = reason

    def join_all(self, pairs: list[tuple[int, JoinedPair]]) -> None:
        self.joined += len(pairs)
        if self.detail:
            for k, pair in pairs:
                self.at(k).joined = pair

    def evictions(self, evicted: dict[str, int]) -> None:
        if evicted:
            self.evicted.update(evicted)
            if self.detail and self.size:
                self.at(self.size - 1).evicted = dict(evicted)

    def notable(self) -> list[Outcome]:
        """The outcomes with alarms, an incident or a quality alert, in batch order."""
        return [self._outcomes[k] for k in sorted(self._outcomes)]

    def all(self) -> list[Outcome]:
        return [self._outcomes.get(k) or Outcome() for k in range(self.size)]


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
        self.history: deque[tuple[float, float, int]] = deque(maxlen=720)
        self.alarm_log: deque[dict[str, Any]] = deque(maxlen=50)
        self.quality_seen: Counter[str] = Counter()
        self.daily: DailyBook | None = None
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
        """Turn the feature streams on once the serving version's reference is known."""
        self.reference = dict(reference)
        self._bounds = bounds_for(self.reference)
        self._names = sorted(self.reference)
        self._means = np.array([self.reference[n].mean for n in self._names])
        self._stds = np.array([self.reference[n].std or 1.0 for n in self._names])
        self._screen = BatchScreen(self._names, self._bounds, self.config.outlier_z)
        self._make_feature_streams()
        if self.config.daily_enabled:
            old, self.daily = self.daily, DailyBook(self.model_name, self.reference)
            if old is not None and old.day is not None:  # today keeps its bins until midnight
                self.daily.resume(old.day, list(old.features.values()))
                self.daily.finished = old.finished

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
        self, point: PredictionPoint, now: datetime, correlation_id: uuid.UUID | str
    ) -> Outcome:
        return self.observe_predictions([point], now, [correlation_id])[0]

    def observe_predictions(
        self,
        points: list[PredictionPoint],
        now: datetime,
        correlation_ids: list[uuid.UUID] | list[str],
    ) -> list[Outcome]:
        """A batch, with one ``Outcome`` per point (joined pair, ignored reason, evictions)."""
        result = BatchOutcome(len(points), detail=True)
        self._predictions(points, now, correlation_ids, result)
        return result.all()

    def observe_prediction_batch(
        self,
        points: list[PredictionPoint],
        now: datetime,
        correlation_ids: list[uuid.UUID] | list[str],
    ) -> BatchOutcome:
        """A batch, as counts plus the outcomes that need the service (the telemetry path)."""
        result = BatchOutcome(len(points))
        self._predictions(points, now, correlation_ids, result)
        return result

    def observe_label(self, point: LabelPoint, now: datetime) -> Outcome:
        result = BatchOutcome(1, detail=True)
        self._labels([point.prediction_id], [point.label], [point.event_id], now, result)
        return result.all()[0]

    def observe_label_batch(
        self,
        prediction_ids: list[str],
        labels: list[int],
        event_ids: list[uuid.UUID] | list[str],
        now: datetime,
    ) -> BatchOutcome:
        """A batch of labels as columns (the telemetry path)."""
        result = BatchOutcome(len(prediction_ids))
        self._labels(prediction_ids, labels, event_ids, now, result)
        return result

    def _predictions(
        self,
        points: list[PredictionPoint],
        now: datetime,
        correlation_ids: list[uuid.UUID] | list[str],
        result: BatchOutcome,
    ) -> None:
        """Three steps: drop re-deliveries and sort out ineligible predictions; check the
        eligible ones' inputs column-wise (drift streams, quality, daily windows); then join
        each with its label in arrival order (the error stream)."""
        fresh = self.joiner.fresh_predictions(points)
        duplicates = len(points) - len(fresh)
        eligible: list[int] = []
        serving = self.serving_version if self.serving_version is not None else -1
        chosen = points if len(fresh) == len(points) else [points[k] for k in fresh]
        rest = fresh
        if (
            set(map(_version, chosen)) == {serving}
            and set(map(_served_by, chosen)) <= SERVED_BY_MONITORED
        ):
            eligible, rest = list(fresh), []  # the common case, checked as sets
        for k in rest:
            point = points[k]
            if point.version == serving and point.served_by in SERVED_BY_MONITORED:
                eligible.append(k)  # what _ineligible says, inlined for the common case
            elif (reason := self._ineligible(point)) is None:
                eligible.append(k)
            else:
                result.ignore(k, reason)
                self.counts[f"ignored_{reason}"] += 1
        if duplicates:
            self.counts["duplicate_predictions"] += duplicates
        self.counts["predictions"] += len(fresh)
        if eligible:
            self.counts["monitored_predictions"] += len(eligible)
            self._inputs(eligible, points, result, correlation_ids, now)
        self.joiner.expire(now)
        self._feed_pairs(self.joiner.add_fresh_predictions(points, fresh), now, result)
        result.evictions(self.joiner.drain_evictions())

    def _labels(
        self,
        prediction_ids: list[str],
        labels: list[int],
        event_ids: list[uuid.UUID] | list[str],
        now: datetime,
        result: BatchOutcome,
    ) -> None:
        self.counts["labels"] += len(prediction_ids)
        self.joiner.expire(now)
        pairs = self.joiner.add_labels(prediction_ids, labels, event_ids, now)
        self._feed_pairs(pairs, now, result)
        result.evictions(self.joiner.drain_evictions())

    def _ineligible(self, point: PredictionPoint) -> str | None:
        if point.served_by not in SERVED_BY_MONITORED:
            return f"served_by_{point.served_by}"
        if self.serving_version is None:
            return "no_serving_version"
        if point.version != self.serving_version:
            return "not_serving_version"
        return None

    def _feed_pairs(
        self, pairs: list[tuple[int, JoinedPair]], now: datetime, result: BatchOutcome
    ) -> None:
        """Joined pairs in arrival order -> the error stream (one batch update)."""
        if not pairs:
            return
        errors: list[float] = []
        fed: list[tuple[int, JoinedPair]] = []
        serving = self.serving_version if self.serving_version is not None else -1
        result.join_all(pairs)
        found = [pair[0] for _, pair in pairs]
        if (
            set(map(_version, found)) == {serving}
            and set(map(_served_by, found)) <= SERVED_BY_MONITORED
        ):
            fed = pairs  # the common case: every pair is of the serving version
            errors = [float(p[3] != pair[1]) for p, (_, pair) in zip(found, pairs, strict=True)]
            pairs_left: list[tuple[int, JoinedPair]] = []
        else:
            pairs_left = pairs
        for k, pair in pairs_left:
            point = pair.prediction
            if point.version == serving and point.served_by in SERVED_BY_MONITORED:
                errors.append(1.0 if point.label != pair.label else 0.0)
                fed.append((k, pair))
            elif self._ineligible(point) is None:
                errors.append(1.0 if pair.prediction.label != pair.label else 0.0)
                fed.append((k, pair))
        self.counts["joined"] += len(pairs)
        if len(fed) < len(pairs):  # the predictions themselves were counted on arrival
            self.counts["pairs_ignored"] += len(pairs) - len(fed)
        if not errors:
            return
        self.counts["errors_fed"] += len(errors)
        self._record_history(errors, self.error.observations, now)
        for i, alarm in self.error.update_many(errors):
            k, pair = fed[i]
            self._raise(alarm, pair.tipping_event_id, now, result.at(k))

    def _record_history(self, errors: list[float], observed: int, now: datetime) -> None:
        """The error rate of every ``HISTORY_EVERY`` consecutive points (for the report)."""
        at, n = 0, len(errors)
        while at < n:
            take = min(HISTORY_EVERY - observed % HISTORY_EVERY, n - at)
            self._errors += int(sum(errors[at : at + take]))
            observed += take
            at += take
            if observed % HISTORY_EVERY == 0:
                self.history.append((now.timestamp(), self._errors / HISTORY_EVERY, observed))
                self._errors = 0

    def _inputs(
        self,
        rows: list[int],
        points: list[PredictionPoint],
        result: BatchOutcome,
        correlation_ids: list[uuid.UUID] | list[str],
        now: datetime,
    ) -> None:
        if not self.reference:
            return
        names = self._names
        matrix = feature_matrix([points[k].features for k in rows], names)
        self._feed_features(matrix, rows, points, result, now)
        self.tally.checked += len(rows)
        flagged = set(self._screen.flagged(matrix).tolist())
        width = len(names)
        flagged.update(i for i, k in enumerate(rows) if len(points[k].features) > width)
        for i in sorted(flagged):
            k = rows[i]
            alert = self._check_quality(points[k], now, correlation_ids[k])
            if alert is not None:
                result.at(k).quality = alert
        if self.daily is not None:
            self.daily.add(names, matrix, now)

    def _feed_features(
        self,
        matrix: np.ndarray,
        rows: list[int],
        points: list[PredictionPoint],
        result: BatchOutcome,
        now: datetime,
    ) -> None:
        """Every feature's standardised values (and magnitudes) into its streams; alarms are
        raised in the order the per-point path raises them (point, feature, mean before scale),
        so which alarm opens the incident does not depend on the batching."""
        if not self.features:
            return
        z = (matrix - self._means) / self._stds
        found: list[tuple[int, int, int, DriftAlarm]] = []
        if np.isfinite(z).all():  # the common case: whole columns, converted in one call each
            for j, (name, values) in enumerate(zip(self._names, z.T.tolist(), strict=True)):
                for i, alarm in self.features[name].update_many(values):
                    found.append((i, j, 0, alarm))
            if self.scales:  # the variance streams of all features at once
                picked = [j for j, name in enumerate(self._names) if name in self.scales]
                streams = [self.scales[self._names[j]] for j in picked]
                magnitudes = np.abs(z if len(picked) == z.shape[1] else z[:, picked])
                for i, at, alarm in update_columns(streams, magnitudes):
                    found.append((i, picked[at], 1, alarm))
        else:  # per column, only the finite values (rows are positions in ``matrix``)
            for j, name in enumerate(self._names):
                column = z[:, j]
                finite = np.flatnonzero(np.isfinite(column))
                positions = finite.tolist()
                values = column[finite]
                for i, alarm in self.features[name].update_many(values.tolist()):
                    found.append((positions[i], j, 0, alarm))
                if name in self.scales:
                    for i, alarm in self.scales[name].update_many(np.abs(values)):
                        found.append((positions[i], j, 1, alarm))
        for i, _, _, alarm in sorted(found, key=lambda hit: hit[:3]):
            k = rows[i]
            self._raise(alarm, points[k].event_id, now, result.at(k))

    # -- alarms and incidents -----------------------------------------------------------------

    def _raise(
        self, alarm: DriftAlarm, causation_id: uuid.UUID | str, now: datetime, outcome: Outcome
    ) -> None:
        if self.incident is not None:
            self.incident.suppressed_alarms += 1
            self.counts["suppressed_alarms"] += 1
            disposition: Disposition = "suppressed_open"
        elif self.cooldown_until is not None and now < self.cooldown_until:
            self.counts["suppressed_alarms"] += 1
            disposition = "suppressed_cooldown"
        else:
            self.incident = outcome.opened = self._open(alarm, causation_id, now)
            disposition = "opened"
        outcome.alarms.append((alarm, disposition))
        self.alarm_log.append(
            {"at": now.isoformat(), "disposition": disposition, **alarm.details()}
        )

    def _open(self, alarm: DriftAlarm, causation_id: uuid.UUID | str, now: datetime) -> Incident:
        incident_id = uuid.uuid4()
        assert self.serving_version is not None  # only eligible points reach the detectors
        event = DriftDetected(
            producer=self.config.producer,
            correlation_id=incident_id,
            causation_id=uuid.UUID(str(causation_id)),
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
            evidence=alarm.details(),
            event=event.model_dump(mode="json"),
            last_emitted_at=now,
            emitted_event_ids=[str(event.event_id)],
        )

    def stream_of(self, feature: str, kind: str) -> Stream | None:
        if kind == "error" or feature == ERROR_STREAM:
            return self.error
        return (self.scales if kind == "scale" else self.features).get(feature)

    def retrigger(self, now: datetime) -> DriftDetected | None:
        """Re-emit the open incident's DriftDetected when it is due and the drift persists.

        Only a published incident of the serving version is re-emitted; the new event has the
        incident's correlation id, a new event id, ``attempt`` + 1 and the current numbers, and
        is caused by the previous emission."""
        incident = self.incident
        if incident is None or not incident.published or self.config.retrigger_s <= 0:
            return None
        last = incident.last_emitted_at or incident.opened_at
        if (now - last).total_seconds() < self.config.retrigger_s:
            return None
        if incident.version != self.serving_version:
            return None
        stream = self.stream_of(*incident.stream_key())
        result = stream.recent_test() if stream else None
        incident.last_emitted_at = now  # checked: next check in retrigger_s either way
        if result is None or not result.rejects:
            self.counts["retrigger_skipped"] += 1
            return None
        previous = incident.drift_event()
        event = DriftDetected(
            **(
                previous.model_dump(exclude={"event_id", "occurred_at", "causation_id"})
                | {
                    "causation_id": previous.event_id,
                    "attempt": incident.attempts + 1,
                    "detected_at": now,
                    "statistic": result.statistic,
                    "threshold": result.threshold,
                    "reference_value": result.reference_value,
                    "current_value": result.current_value,
                    "window_size": result.n_current,
                    "observations": stream.observations if stream else 0,
                }
            )
        )
        incident.attempts += 1
        incident.event = event.model_dump(mode="json")
        incident.published = False
        incident.emitted_event_ids.append(str(event.event_id))
        self.counts["retriggers"] += 1
        return event

    # -- data quality -------------------------------------------------------------------------

    def _check_quality(
        self, point: PredictionPoint, now: datetime, correlation_id: uuid.UUID | str
    ) -> DataQualityAlert | None:
        if not self.reference:
            return None
        issues = quality_issues(point.features, self._bounds, self.config.outlier_z)
        if not issues:
            return None
        for issue in issues:
            self.quality_seen[issue.check] += 1
        self.tally.add(point.prediction_id, issues)
        if self.quality_next_at is not None and now < self.quality_next_at:
            return None
        tally, self.tally = self.tally, self._new_tally()
        self.quality_next_at = now + timedelta(seconds=self.config.cooldown_s)
        self.counts["quality_alerts"] += 1
        detail = " ".join(f"{k}={v}" for k, v in sorted(tally.counts.items()))
        by_feature = " ".join(f"{k}={v}" for k, v in sorted(tally.by_feature.items()))
        return DataQualityAlert(
            producer=self.config.producer,
            correlation_id=uuid.UUID(str(correlation_id)),
            causation_id=uuid.UUID(str(point.event_id)),
            model_name=self.model_name,
            version=self.serving_version,
            check=tally.top(tally.counts),
            feature=tally.top(tally.by_feature),
            count=tally.total,
            examples=tally.examples,
            detail=f"{detail}; by feature: {by_feature}; predictions checked: {tally.checked}",
        )

    def _new_tally(self) -> QualityTally:
        return QualityTally(max_examples=self.config.quality_max_examples)

    # -- state --------------------------------------------------------------------------------

    def _make_feature_streams(self) -> None:
        cfg, names = self.config, sorted(self.reference)
        self.features: dict[str, Stream] = {}
        self.scales: dict[str, Stream] = {}
        if cfg.feature_drift_enabled:
            self.features = {n: cfg.stream(self.model_name, n, "mean") for n in names}
            if cfg.scale_drift_enabled:
                self.scales = {n: cfg.stream(self.model_name, n, "scale") for n in names}

    def _reset_detectors(self) -> None:
        self.error = self.config.stream(self.model_name, ERROR_STREAM, "error")
        self._errors = 0
        self._make_feature_streams()
        self.tally = self._new_tally()

    def streams(self) -> list[Stream]:
        return [self.error, *self.features.values(), *self.scales.values()]

    def error_rate(self) -> float | None:
        return self.error.mean() if self.error.observations else None

    def snapshot(self, now: datetime) -> dict[str, Any]:
        """JSON checkpoint of the detector windows (no pickling): replayed by ``restore``."""
        return {
            "_id": self.model_name,
            "model_name": self.model_name,
            "serving_version": self.serving_version,
            "saved_at": now.timestamp(),
            "streams": [s.snapshot() for s in self.streams()],
            "history": [list(h) for h in self.history],
            "quality_seen": dict(self.quality_seen),
        }

    def restore(self, snap: dict[str, Any]) -> int:
        """Replay a checkpoint of the same serving version; returns the streams restored."""
        if snap.get("serving_version") != self.serving_version or self.serving_version is None:
            return 0
        restored = 0
        for item in snap.get("streams", []):
            stream = self.stream_of(item["feature"], item["kind"])
            if stream is not None and stream.observations == 0:
                stream.restore(item)
                restored += 1
        self.history.extend(tuple(h) for h in snap.get("history", []))
        self.quality_seen.update(snap.get("quality_seen", {}))
        self.counts["restored_streams"] += restored
        return restored

    def status(self) -> dict[str, Any]:
        incident = self.incident
        return {
            "model_name": self.model_name,
            "serving_version": self.serving_version,
            "reference_features": sorted(self.reference),
            "observations": self.error.observations,
            "joined": self.counts["joined"],
            "error_rate": self.error_rate(),
            "pending": self.joiner.pending,
            "evicted": dict(self.joiner.evicted),
            "duplicates": self.joiner.duplicates,
            "counts": dict(self.counts),
            "detectors": {
                ERROR_STREAM: self.error.state(),
                **{name: s.state() for name, s in self.features.items()},
                **{f"{name}:scale": s.state() for name, s in self.scales.items()},
            },
            "quality": dict(self.quality_seen),
            "open_incident": incident.summary() if incident else None,
            "cooldown_until": self.cooldown_until,
        }


__all__ = [
    "BatchOutcome",
    "DetectorConfig",
    "Incident",
    "ModelMonitor",
    "Outcome",
    "standardise",
]
