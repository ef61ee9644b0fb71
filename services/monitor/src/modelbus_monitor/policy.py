"""The monitor's rules, in plain code: which predictions are monitored, what a drift alarm does to
a model's incident, and when a data-quality alert goes out.

The signal kernel (``kernel.py``) finds the signals: confirmed drift alarms (a streaming detector
fired AND the batch two-sample test rejected; confirmation is the kernel's job, so every alarm
that reaches this module is a confirmed one), the joined pairs and the data-quality issues. This
module decides what they mean:

- Eligibility: only predictions served by the champion (or its fallback) of the CURRENT serving
  version are monitored.
- Incidents: at most one open incident per model. An alarm opens one unless one is already open
  (the alarm is recorded on it: "suppressed, open") or the last one closed less than
  ``cooldown_s`` ago ("suppressed, cooldown": counted only). A promotion or rollback closes the
  open incident and starts the cooldown; one that happened before the incident opened is a replay
  and changes nothing. While an incident stays open, its DriftDetected is emitted again every
  ``retrigger_s`` if its stream still differs from the reference (a rejected challenger must not
  stall the retraining loop).
- Quality alerts: at most one per model per ``cooldown_s``, carrying the counts since the last.

Pure: no I/O; the service saves and publishes what these objects return.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from modelbus_contracts import DataQualityAlert, DriftDetected

from .detectors import ERROR_STREAM, DriftAlarm, TestResult
from .quality import QualityIssue, QualityTally

MONITORED_SERVERS = frozenset({"champion", "fallback"})
Disposition = Literal["opened", "suppressed_open", "suppressed_cooldown"]


def ineligibility(version: int, served_by: str, serving_version: int | None) -> str | None:
    """Why a prediction is not monitored (the metric's ``reason``), or None when it is."""
    if served_by not in MONITORED_SERVERS:
        return f"served_by_{served_by}"
    if serving_version is None:
        return "no_serving_version"
    if version != serving_version:
        return "not_serving_version"
    return None


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
        """(feature, kind) of the stream whose alarm opened the incident."""
        feature = str(self.evidence.get("feature", ERROR_STREAM))
        kind = self.evidence.get("kind") or ("error" if feature == ERROR_STREAM else "mean")
        return feature, str(kind)


class IncidentPolicy:
    """One model's incident: opened, suppressed, cooled down, re-emitted, closed."""

    def __init__(
        self, model_name: str, *, producer: str, cooldown_s: float, retrigger_s: float
    ) -> None:
        self.model_name = model_name
        self.producer = producer
        self.cooldown = timedelta(seconds=cooldown_s)
        self.retrigger_s = retrigger_s
        self.incident: Incident | None = None
        self.cooldown_until: datetime | None = None
        self.counts: Counter[str] = Counter()

    def on_alarm(
        self, alarm: DriftAlarm, causation_id: str, now: datetime, version: int
    ) -> tuple[Disposition, Incident | None]:
        """What a confirmed alarm does: open an incident (returned) or be suppressed."""
        if self.incident is not None:
            self.incident.suppressed_alarms += 1
            self.counts["suppressed_alarms"] += 1
            return "suppressed_open", None
        if self.cooldown_until is not None and now < self.cooldown_until:
            self.counts["suppressed_alarms"] += 1
            return "suppressed_cooldown", None
        self.incident = self._open(alarm, causation_id, now, version)
        self.counts["incidents_opened"] += 1
        return "opened", self.incident

    def _open(self, alarm: DriftAlarm, causation_id: str, now: datetime, version: int) -> Incident:
        """A new incident and its first DriftDetected: the incident id is the correlation id,
        the event that tipped the detector is the cause."""
        incident_id = uuid.uuid4()
        event = DriftDetected(
            producer=self.producer,
            correlation_id=incident_id,
            causation_id=uuid.UUID(str(causation_id)),
            model_name=self.model_name,
            version=version,
            incident_id=str(incident_id),
            detected_at=now,
            **alarm.evidence(),
        )
        return Incident(
            incident_id=str(incident_id),
            model_name=self.model_name,
            version=version,
            opened_at=now,
            causation_id=str(causation_id),
            evidence=alarm.details(),
            event=event.model_dump(mode="json"),
            last_emitted_at=now,
            emitted_event_ids=[str(event.event_id)],
        )

    def on_new_version(
        self,
        now: datetime,
        version: int,
        *,
        event_id: str | None,
        occurred_at: datetime | None,
        reason: str,
    ) -> tuple[bool, Incident | None]:
        """A promotion or rollback: (whether it applies, the incident it closed). One that
        happened before the open incident was opened is a replay: it does not apply."""
        incident = self.incident
        if incident is not None and occurred_at is not None and occurred_at < incident.opened_at:
            self.counts["stale_promotions"] += 1
            return False, None
        self.counts["promotions"] += 1
        if incident is None:
            return True, None
        incident.close(now, version, event_id, reason)
        self.cooldown_until = now + self.cooldown
        self.incident = None
        return True, incident

    def due_for_reemission(self, now: datetime, serving_version: int | None) -> Incident | None:
        """The open incident, when its DriftDetected is due again: it has been published, it is
        of the serving version and ``retrigger_s`` passed since the last emission (or check)."""
        incident = self.incident
        if incident is None or not incident.published or self.retrigger_s <= 0:
            return None
        last = incident.last_emitted_at or incident.opened_at
        if (now - last).total_seconds() < self.retrigger_s:
            return None
        if incident.version != serving_version:
            return None
        return incident

    def reemit(
        self, incident: Incident, now: datetime, test: TestResult | None, observations: int
    ) -> DriftDetected | None:
        """After ``due_for_reemission``: the re-test of the incident's stream (reference vs
        recent points). If the drift persists, the DriftDetected to emit again: same correlation
        and incident id, new event id, ``attempt`` + 1, the current numbers, caused by the
        previous emission. Either way the next check is ``retrigger_s`` from now."""
        incident.last_emitted_at = now
        if test is None or not test.rejects:
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
                    "statistic": test.statistic,
                    "threshold": test.threshold,
                    "reference_value": test.reference_value,
                    "current_value": test.current_value,
                    "window_size": test.n_current,
                    "observations": observations,
                }
            )
        )
        incident.attempts += 1
        incident.event = event.model_dump(mode="json")
        incident.published = False
        incident.emitted_event_ids.append(str(event.event_id))
        self.counts["retriggers"] += 1
        return event


class QualityAlerts:
    """Data-quality issues -> at most one DataQualityAlert per model per ``cooldown_s``, with
    the counts by check and by feature since the last alert, the number of predictions checked
    and up to ``max_examples`` examples."""

    def __init__(
        self, model_name: str, *, producer: str, cooldown_s: float, max_examples: int
    ) -> None:
        self.model_name = model_name
        self.producer = producer
        self.cooldown = timedelta(seconds=cooldown_s)
        self.max_examples = max_examples
        self.next_at: datetime | None = None
        self.seen: Counter[str] = Counter()  # issues by check, for the status
        self.counts: Counter[str] = Counter()
        self.restart()

    def restart(self) -> None:
        """Forget the issues not alerted yet (a new serving version)."""
        self.tally = QualityTally(max_examples=self.max_examples)

    def checked(self, predictions: int) -> None:
        self.tally.checked += predictions

    def on_issues(
        self,
        issues: list[QualityIssue],
        now: datetime,
        *,
        prediction_id: str,
        version: int | None,
        event_id: str,
        correlation_id: str,
    ) -> DataQualityAlert | None:
        """One prediction's issues: counted; an alert (with everything counted since the last
        one) unless the last alert was less than ``cooldown_s`` ago."""
        for issue in issues:
            self.seen[issue.check] += 1
        self.tally.add(prediction_id, issues)
        if self.next_at is not None and now < self.next_at:
            return None
        tally = self.tally
        self.restart()
        self.next_at = now + self.cooldown
        self.counts["quality_alerts"] += 1
        detail = " ".join(f"{k}={v}" for k, v in sorted(tally.counts.items()))
        by_feature = " ".join(f"{k}={v}" for k, v in sorted(tally.by_feature.items()))
        return DataQualityAlert(
            producer=self.producer,
            correlation_id=uuid.UUID(str(correlation_id)),
            causation_id=uuid.UUID(str(event_id)),
            model_name=self.model_name,
            version=version,
            check=tally.top(tally.counts),
            feature=tally.top(tally.by_feature),
            count=tally.total,
            examples=tally.examples,
            detail=f"{detail}; by feature: {by_feature}; predictions checked: {tally.checked}",
        )
