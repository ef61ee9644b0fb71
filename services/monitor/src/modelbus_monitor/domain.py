"""One model's monitor: the signal kernel (``kernel.py``: what the telemetry shows) composed with
the policy (``policy.py``: what it means). Pure, no I/O; the service layer calls only this, a
batch at a time, and turns the outcome into writes, events and metrics."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from modelbus_contracts import DataQualityAlert, DriftDetected, FeatureStats
from modelbus_contracts.policy import MonitoringPolicy

from .config import DetectorConfig
from .daily import DailyBook
from .detectors import ERROR_STREAM, DriftAlarm
from .kernel import SignalKernel, Signals
from .outcomes import Task
from .policy import Disposition, Incident, IncidentPolicy, QualityAlerts, RecoveryRules


@dataclass
class RowOutcome:
    """What one prediction or label led to."""

    alarms: list[tuple[DriftAlarm, Disposition]] = field(default_factory=list)
    opened: Incident | None = None
    quality: DataQualityAlert | None = None


def recovery_rules(config: DetectorConfig) -> RecoveryRules:
    return RecoveryRules(
        tolerance=config.recovery_tolerance,
        min_points=config.recovery_min_points,
        max_attempts=config.incident_max_attempts,
        relative_tolerance=config.recovery_rmse_tolerance,
    )


@dataclass
class Advance:
    """What the incident's progress check led to: a DriftDetected to emit (the next attempt),
    the incident it closed (recovered), or only a change of state to save (needs a human)."""

    event: DriftDetected | None = None
    closed: Incident | None = None
    changed: Incident | None = None


@dataclass
class BatchOutcome:
    """What a batch led to: counts for the metrics, and the rows that need the service."""

    joined: int = 0
    ignored: Counter[str] = field(default_factory=Counter)
    evicted: dict[str, int] = field(default_factory=dict)
    rows: dict[int, RowOutcome] = field(default_factory=dict)

    def at(self, row: int) -> RowOutcome:
        return self.rows.setdefault(row, RowOutcome())

    def notable(self) -> list[RowOutcome]:
        """The rows with alarms, an incident or a quality alert, in batch order."""
        return [self.rows[row] for row in sorted(self.rows)]


class ModelMonitor:
    """Everything the monitor knows about one model."""

    def __init__(self, model_name: str, config: DetectorConfig) -> None:
        self.model_name = model_name
        self.base_config = self.config = config
        self.policy_revision = 0
        self.kernel = SignalKernel(model_name, config)
        self.policy = IncidentPolicy(
            model_name,
            producer=config.producer,
            cooldown_s=config.cooldown_s,
            retrigger_s=config.retrigger_s,
            rules=recovery_rules(config),
        )
        self.quality = QualityAlerts(
            model_name,
            producer=config.producer,
            cooldown_s=config.cooldown_s,
            max_examples=config.quality_max_examples,
        )

    @property
    def serving_version(self) -> int | None:
        return self.kernel.serving_version

    @property
    def reference(self) -> dict[str, FeatureStats]:
        return self.kernel.reference

    @property
    def task(self) -> Task:
        return self.kernel.task

    @property
    def metric(self) -> str:
        """What recovery is judged on: RMSE for a regression, accuracy for a classifier."""
        return "rmse" if self.kernel.task == "regression" else "accuracy"

    @property
    def incident(self) -> Incident | None:
        return self.policy.incident

    @property
    def daily(self) -> DailyBook | None:
        return self.kernel.daily

    @property
    def history(self) -> list[tuple[float, float, int]]:
        return list(self.kernel.history)

    @property
    def counts(self) -> Counter[str]:
        return Counter({**self.kernel.counts, **self.policy.counts, **self.quality.counts})

    # -- live policy ----------------------------------------------------------------------------

    def apply_policy(self, revision: int, monitoring: MonitoringPolicy) -> bool:
        """The model's live monitoring policy (registry) over the service's settings: the
        recovery rules apply at once, the detectors from the next serving version (the streams
        running now keep theirs). False when this revision is already applied."""
        if revision == self.policy_revision:
            return False
        base = self.base_config
        overrides = dict(base.overrides)
        if monitoring.detectors:
            overrides[self.model_name] = {
                **base.overrides.get(self.model_name, {}),
                **monitoring.detectors,
            }
        changes = {
            k: v
            for k, v in (
                ("recovery_tolerance", monitoring.recovery_tolerance),
                ("recovery_min_points", monitoring.recovery_min_points),
                ("incident_max_attempts", monitoring.incident_max_attempts),
            )
            if v is not None
        }
        self.config = self.kernel.config = replace(base, overrides=overrides, **changes)
        self.policy.rules = recovery_rules(self.config)
        self.policy_revision = revision
        return True

    # -- serving version ------------------------------------------------------------------------

    def adopt(
        self,
        version: int | None,
        reference: dict[str, FeatureStats] | None,
        task: Task | None = None,
    ) -> None:
        """Start-up: learn the serving version (its reference and task, when known) without
        touching incidents."""
        if version != self.kernel.serving_version:
            self.kernel.reset(version, task=task)
            self.quality.restart()
        elif task is not None:
            self.kernel.set_task(task)
        if reference:
            self.kernel.set_reference(reference)

    def serve(
        self,
        version: int,
        reference: dict[str, FeatureStats] | None,
        now: datetime,
        *,
        event_id: str | None = None,
        occurred_at: datetime | None = None,
        reason: str = "promoted",
        task: Task | None = None,
    ) -> Incident | None:
        """A promotion or rollback: close the open incident (returned), switch the version,
        reset the detectors. A replay older than the open incident changes nothing."""
        applies, closed = self.policy.on_new_version(
            now, version, event_id=event_id, occurred_at=occurred_at, reason=reason
        )
        if applies:
            self.kernel.reset(version, forget_reference=True, task=task)
            self.quality.restart()
            if reference:
                self.kernel.set_reference(reference)
        return closed

    def restore_incident(self, incident: Incident) -> None:
        self.policy.incident = incident

    # -- batches --------------------------------------------------------------------------------

    def observe_predictions(
        self,
        now: datetime,
        *,
        prediction_ids: list[str],
        versions: list[int],
        served_by: list[str],
        labels: list[Any],
        features: list[dict[str, Any]],
        event_ids: list[str],
        correlation_ids: list[str],
        values: list[float | None] | None = None,
    ) -> BatchOutcome:
        """A batch of predictions: ``labels`` the predicted classes, ``values`` the predicted
        values (a regression's; what its error stream compares with the labels)."""
        predicted = values if self.kernel.task == "regression" and values is not None else labels
        signals = self.kernel.predictions(
            now,
            prediction_ids=prediction_ids,
            versions=versions,
            served_by=served_by,
            labels=predicted,
            features=features,
            event_ids=event_ids,
        )
        outcome = self._decide(signals, now)
        if signals.checked:
            self.quality.checked(signals.checked)
        for row, issues in signals.issues:
            alert = self.quality.on_issues(
                issues,
                now,
                prediction_id=prediction_ids[row],
                version=self.serving_version,
                event_id=event_ids[row],
                correlation_id=correlation_ids[row],
            )
            if alert is not None:
                outcome.at(row).quality = alert
        return outcome

    def observe_labels(
        self, now: datetime, *, prediction_ids: list[str], labels: list[Any], event_ids: list[str]
    ) -> BatchOutcome:
        signals = self.kernel.labels(
            now, prediction_ids=prediction_ids, labels=labels, event_ids=event_ids
        )
        return self._decide(signals, now)

    def _decide(self, signals: Signals, now: datetime) -> BatchOutcome:
        """The policy's decision on every alarm, in order."""
        outcome = BatchOutcome(
            joined=len(signals.joined),
            ignored=Counter(reason for _, reason in signals.ignored),
            evicted=signals.evicted,
        )
        version = self.serving_version
        for row, alarm, cause in signals.alarms:
            assert version is not None  # only monitored predictions reach the detectors
            disposition, opened = self.policy.on_alarm(
                alarm, cause, now, version, self.baseline(alarm), self.metric
            )
            if opened is not None:  # live points of the incident count from here
                opened.mark = self.kernel.error.observations
            at = outcome.at(row)
            at.alarms.append((alarm, disposition))
            at.opened = opened or at.opened
        return outcome

    # -- recovery -------------------------------------------------------------------------------

    def baseline(self, alarm: DriftAlarm) -> tuple[float | None, int]:
        """The serving model's pre-drift metric (accuracy, or RMSE for a regression) and on how
        many labelled points: its error stream's reference (its first labelled points since it
        started serving) up to where the alarm's changed window begins. An error-stream alarm's
        own test already compared the points before its change point: for a classifier its
        reference value is the pre-drift error rate."""
        error = self.kernel.error
        before = max(0, error.observations - 2 * alarm.window_size)  # the test used every 2nd
        points = min(len(error.reference), before)
        residuals = self.kernel.residuals
        if residuals is not None:  # the squared residuals are aligned with the error stream
            return (residuals.baseline_rmse(points), points) if points else (None, 0)
        if alarm.feature == ERROR_STREAM:
            return 1.0 - alarm.reference_value, points
        if points == 0:
            return None, 0
        return 1.0 - sum(error.reference[:points]) / points, points

    def live(self, incident: Incident) -> tuple[float | None, int, float | None]:
        """The serving version's metric now (accuracy, or RMSE for a regression), how many
        points there are since the incident's mark (its opening, last attempt or the new
        version's start) and, for RMSE, its upper confidence bound. Accuracy is over the newest
        ``recovery_min_points`` labelled points; RMSE over every point since the mark the
        stream keeps (its bound tightens as they come)."""
        error, mark = self.kernel.error, incident.mark
        # fewer observations than the mark: the stream restarted since (no checkpoint)
        points = error.observations - mark if error.observations >= mark else error.observations
        cap = len(error.recent) if self.metric == "rmse" else self.policy.rules.min_points
        newest = min(points, len(error.recent), cap)
        if not newest:
            return None, points, None
        numbers = self.kernel.performance(newest)
        if self.metric == "rmse":
            return numbers.get("rmse"), points, numbers.get("rmse_upper")
        return numbers.get("accuracy"), points, None

    def advance(self, now: datetime) -> Advance:
        """Move the open incident on: closed when live accuracy recovered, the next attempt's
        DriftDetected when one is due, ``needs_human`` when attempts ran out; without a
        pre-drift accuracy, the re-emission of a persisting drift every ``retrigger_s``."""
        incident = self.policy.incident
        if incident is None:
            return Advance()
        if incident.baseline_value is not None:
            value, points, bound = self.live(incident)
            verdict, touched, why = self.policy.on_live(
                now, self.serving_version, value, points, bound
            )
            if verdict == "recovered":
                return Advance(closed=touched)
            if verdict == "needs_human":
                return Advance(changed=touched)
            if verdict == "next":
                error = self.kernel.error
                event = self.policy.next_attempt(
                    incident,
                    now,
                    None,
                    error.observations,
                    why,
                    version=self.serving_version,
                    mark=error.observations,
                )
                return Advance(event=event)
            return Advance()
        due = self.policy.due_for_reemission(now, self.serving_version)
        if due is None:
            return Advance()
        stream = self.kernel.stream_of(*due.stream_key())
        test = stream.recent_test() if stream else None
        observations = stream.observations if stream else 0
        return Advance(event=self.policy.reemit(due, now, test, observations))

    # -- state ----------------------------------------------------------------------------------

    def error_rate(self) -> float | None:
        return self.kernel.error_rate()

    def snapshot(self, now: datetime) -> dict[str, Any]:
        """JSON checkpoint of the detector windows, the join buffers and the counts (no
        pickling): replayed by ``restore``."""
        return {
            "_id": self.model_name,
            "model_name": self.model_name,
            "serving_version": self.serving_version,
            "saved_at": now.timestamp(),
            **self.kernel.snapshot(),
            "quality_seen": dict(self.quality.seen),
        }

    def restore(self, snap: dict[str, Any]) -> int:
        """Replay a checkpoint of the same serving version; returns the streams restored."""
        if snap.get("serving_version") != self.serving_version or self.serving_version is None:
            return 0
        restored = self.kernel.restore(snap)
        self.quality.seen.update(snap.get("quality_seen", {}))
        return restored

    def status(self) -> dict[str, Any]:
        kernel, incident = self.kernel, self.policy.incident
        return {
            "model_name": self.model_name,
            "serving_version": self.serving_version,
            "reference_features": sorted(self.reference),
            "observations": kernel.error.observations,
            "joined": kernel.counts["joined"],
            "error_rate": kernel.error_rate(),
            "task": kernel.task,
            "performance": kernel.performance(),
            "pending": kernel.joiner.pending,
            "evicted": dict(kernel.joiner.evicted),
            "duplicates": kernel.joiner.duplicates,
            "counts": dict(self.counts),
            "detectors": kernel.detectors(),
            "quality": dict(self.quality.seen),
            "open_incident": incident.summary() if incident else None,
            "cooldown_until": self.policy.cooldown_until,
        }
