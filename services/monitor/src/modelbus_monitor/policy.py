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
  ``cooldown_s`` ago ("suppressed, cooldown": counted only). One that happened before the
  incident opened is a replay and changes nothing.
- Recovery, not one shot. An incident remembers the serving model's pre-drift accuracy (its
  error stream's reference) and moves through states: ``detected`` -> ``retraining`` (its
  DriftDetected is out) -> ``recovering`` (a new version serves; its live accuracy is being
  measured) -> ``recovered`` (live accuracy over ``min_points`` labelled points is back within
  ``tolerance`` of the pre-drift level: the incident closes). A new version that does not bring
  accuracy back, or a retrain that was rejected (or never came) while accuracy stays low, leads
  to the next attempt: the DriftDetected again, same incident, ``attempt`` + 1, the same
  ``onset_at`` (so the trainer takes a larger window), once ``min_points`` new labelled points
  arrived since the last one. After ``max_attempts`` the incident ``needs_human``: nothing more
  is emitted, and it still closes if accuracy recovers. Without labelled pre-drift data there is
  nothing to recover to: a promotion or rollback closes the incident (``resolved``), as does, for
  a persisting feature drift, nothing but a new version (its DriftDetected is re-emitted every
  ``retrigger_s`` while its stream still differs from the reference).
- Quality alerts: at most one per model per ``cooldown_s``, carrying the counts since the last.

Recovery is judged on the task's metric (``Metric``): accuracy for a classifier (higher is
better; recovered within ``tolerance``, absolute, of the pre-drift accuracy), RMSE for a
regression (lower is better; recovered when the live RMSE's one-sided 95% upper confidence bound
is at most ``relative_tolerance`` above the pre-drift RMSE,
relative because an RMSE has the label's unit). The incident keeps ``metric``,
``baseline_value`` and ``live_value``; for accuracy also ``baseline_accuracy`` and
``live_accuracy`` (as before).

Pure: no I/O; the service saves and publishes what these objects return.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from modelbus_contracts import DataQualityAlert, DriftDetected, IncidentUpdated
from modelbus_contracts.events import IncidentState

from .detectors import ERROR_STREAM, DriftAlarm, TestResult
from .quality import QualityIssue, QualityTally

MONITORED_SERVERS = frozenset({"champion", "fallback"})
Disposition = Literal["opened", "suppressed_open", "suppressed_cooldown"]
INCIDENT_STATES: tuple[str, ...] = IncidentState.__args__  # type: ignore[attr-defined]
MIN_BASELINE_POINTS = 30  # fewer labelled pre-drift points say nothing about accuracy


@dataclass(frozen=True)
class RecoveryRules:
    """When an incident counts as recovered, and how its retrains are paced and bounded."""

    tolerance: float = 0.03
    min_points: int = 300
    max_attempts: int = 5
    relative_tolerance: float = 0.1  # RMSE

    def target(self, metric: str, baseline: float) -> float:
        """The level the live metric must reach (at least, for accuracy; at most, for RMSE)."""
        if metric == "rmse":
            return baseline * (1 + self.relative_tolerance)
        return baseline - self.tolerance

    def within(self, metric: str, live: float, baseline: float, bound: float | None = None) -> bool:
        """Recovered? RMSE on its upper confidence ``bound`` when there is one (lucky points
        cannot close the incident), accuracy on the value."""
        target = self.target(metric, baseline)
        if metric == "rmse":
            return (bound if bound is not None else live) <= target
        return live >= target

    def allowance(self, metric: str) -> str:
        if metric == "rmse":
            return f"{self.relative_tolerance:.0%}"
        return f"{self.tolerance}"


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
    state: str = "detected"
    baseline_accuracy: float | None = None
    baseline_points: int = 0
    live_accuracy: float | None = None
    live_points: int = 0
    metric: str = "accuracy"  # what recovery is judged on: accuracy or rmse
    baseline_value: float | None = None
    live_value: float | None = None
    live_version: int | None = None
    mark: int = 0  # the error stream's observations when the live points started counting
    rejections: int = 0
    verdict_at: datetime | None = None  # a rejection of this incident's retrain, not acted on
    transitions: list[dict[str, Any]] = field(default_factory=list)
    announced: int = 0  # transitions already published as IncidentUpdated

    def __post_init__(self) -> None:  # an incident stored before the metric was recorded
        if self.metric == "accuracy" and self.baseline_value is None:
            self.baseline_value = self.baseline_accuracy
            self.live_value = self.live_accuracy

    def move(self, state: str, now: datetime, reason: str, **numbers: Any) -> None:
        """Change state, recording why (the audit trail of the incident)."""
        self.state = state
        self.transitions.append(
            {"at": now.isoformat(), "state": state, "reason": reason, **numbers}
        )

    def close(self, now: datetime, version: int, event_id: str | None, reason: str) -> None:
        self.status = "closed"
        self.closed_at = now
        self.closed_by_version = version
        self.closed_by_event_id = event_id
        self.close_reason = reason

    def updates(self, producer: str) -> list[IncidentUpdated]:
        """The IncidentUpdated of every state change not published yet (saved with the
        incident, so published by the relay exactly when the change is stored)."""
        fresh = [t for t in self.transitions[self.announced :] if t["state"] in INCIDENT_STATES]
        self.announced = len(self.transitions)
        cause = self.emitted_event_ids[-1] if self.emitted_event_ids else None
        return [
            IncidentUpdated(
                producer=producer,
                correlation_id=uuid.UUID(self.incident_id),
                causation_id=uuid.UUID(cause) if cause else None,
                model_name=self.model_name,
                incident_id=self.incident_id,
                version=step.get("version") or self.live_version or self.version,
                state=step["state"],
                attempt=self.attempts,
                reason=str(step["reason"])[:2000],
                baseline_accuracy=self.baseline_accuracy,
                live_accuracy=step.get("live_accuracy"),
                live_points=int(step.get("live_points") or 0),
                metric=self.metric,  # type: ignore[arg-type]
                baseline_value=self.baseline_value,
                live_value=step.get("live_value"),
                open=step["state"] not in ("recovered", "resolved"),
            )
            for step in fresh
        ]

    def emitted(self, now: datetime) -> None:
        """Its DriftDetected is in the outbox: a retrain is requested."""
        self.published = True
        if self.state == "detected":
            self.move("retraining", now, f"DriftDetected attempt {self.attempts} emitted")

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
            "state": self.state,
            "baseline_accuracy": self.baseline_accuracy,
            "live_accuracy": self.live_accuracy,
            "live_points": self.live_points,
            "metric": self.metric,
            "baseline_value": self.baseline_value,
            "live_value": self.live_value,
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
        self,
        model_name: str,
        *,
        producer: str,
        cooldown_s: float,
        retrigger_s: float,
        rules: RecoveryRules | None = None,
    ) -> None:
        self.model_name = model_name
        self.producer = producer
        self.cooldown = timedelta(seconds=cooldown_s)
        self.retrigger_s = retrigger_s
        self.rules = rules or RecoveryRules()
        self.incident: Incident | None = None
        self.cooldown_until: datetime | None = None
        self.counts: Counter[str] = Counter()

    def on_alarm(
        self,
        alarm: DriftAlarm,
        causation_id: str,
        now: datetime,
        version: int,
        baseline: tuple[float | None, int] = (None, 0),
        metric: str = "accuracy",
    ) -> tuple[Disposition, Incident | None]:
        """What a confirmed alarm does: open an incident (returned) or be suppressed.
        ``baseline``: the serving model's pre-drift ``metric`` and its labelled points."""
        if self.incident is not None:
            self.incident.suppressed_alarms += 1
            self.counts["suppressed_alarms"] += 1
            return "suppressed_open", None
        if self.cooldown_until is not None and now < self.cooldown_until:
            self.counts["suppressed_alarms"] += 1
            return "suppressed_cooldown", None
        self.incident = incident = self._open(alarm, causation_id, now, version)
        incident.metric = metric
        value, points = baseline
        if value is not None and points >= MIN_BASELINE_POINTS:
            incident.baseline_value, incident.baseline_points = value, points
            if metric == "accuracy":
                incident.baseline_accuracy = value
        incident.move(
            "detected",
            now,
            f"{alarm.detector} on {alarm.feature}, confirmed by the batch test",
            baseline_accuracy=incident.baseline_accuracy,
            baseline_value=incident.baseline_value,
            metric=metric,
        )
        self.counts["incidents_opened"] += 1
        return "opened", incident

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
            onset_at=now,
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
        if incident.baseline_value is None:
            incident.move(
                "resolved",
                now,
                f"v{version} serves ({_short(reason)}); no labelled pre-drift "
                f"{incident.metric} to judge recovery by",
            )
            return True, self._close(now, version, event_id, reason)
        incident.live_version, incident.mark = version, 0  # the new version's points, from 0
        incident.live_accuracy, incident.live_points, incident.verdict_at = None, 0, None
        incident.live_value = None
        incident.move(
            "recovering",
            now,
            f"v{version} serves ({_short(reason)}); measuring its live {incident.metric}",
            version=version,
        )
        return True, None

    def _close(
        self, now: datetime, version: int, event_id: str | None, reason: str
    ) -> Incident | None:
        incident = self.incident
        if incident is None:
            return None
        incident.close(now, version, event_id, reason)
        self.cooldown_until = now + self.cooldown
        self.incident = None
        return incident

    def resolve(self, incident_id: str, now: datetime, actor: str, reason: str) -> Incident | None:
        """A human closes the open incident (``resolved``), e.g. one that ``needs_human``; the
        cooldown starts as after a recovery. None when it is not this model's open incident."""
        incident = self.incident
        if incident is None or incident.incident_id != incident_id:
            return None
        incident.move("resolved", now, f"resolved by {actor}: {reason}", actor=actor)
        self.counts["incidents_resolved_by_hand"] += 1
        version = incident.live_version or incident.version
        return self._close(now, version, None, f"resolved by {actor}")

    def on_rejected(
        self, incident_id: str, version: int, reasons: list[str], now: datetime
    ) -> bool:
        """The deployer rejected a retrain of the open incident: the next attempt may go out as
        soon as enough new labelled data arrived (no need to wait ``retrigger_s``)."""
        incident = self.incident
        if incident is None or incident.incident_id != incident_id:
            return False
        incident.rejections += 1
        incident.verdict_at = now
        incident.transitions.append(
            {
                "at": now.isoformat(),
                "state": incident.state,
                "reason": f"v{version} rejected",
                "details": reasons[:5],
            }
        )
        return True

    def on_live(
        self,
        now: datetime,
        serving_version: int | None,
        value: float | None,
        points: int,
        bound: float | None = None,
    ) -> tuple[str, Incident | None, str]:
        """The serving version's live metric (the incident's: accuracy or RMSE) over the
        ``points`` labelled since the mark: ``("recovered", closed incident, why)``,
        ``("next", incident, why)`` when another attempt is due, ``("needs_human", incident,
        why)`` when attempts ran out, else ``("wait", None, "")``."""
        incident, rules = self.incident, self.rules
        if incident is None or not incident.published or incident.baseline_value is None:
            return "wait", None, ""
        if value is None or points < rules.min_points:
            return "wait", None, ""
        metric, baseline = incident.metric, incident.baseline_value
        incident.live_value, incident.live_points = value, points
        if metric == "accuracy":
            incident.live_accuracy = value
        incident.live_version = serving_version
        numbers: dict[str, Any] = {
            "metric": metric,
            "live_value": value,
            "live_points": points,
            "baseline_value": baseline,
            "tolerance": rules.tolerance if metric == "accuracy" else rules.relative_tolerance,
            "version": serving_version,
        }
        if metric == "accuracy":
            numbers |= {"live_accuracy": value, "baseline_accuracy": baseline}
        live = f"live {metric} {value:.3f} of v{serving_version} over {points} points"
        if bound is not None:
            numbers["live_upper_bound"] = bound
            live += f" (95% upper bound {bound:.3f})"
        if rules.within(metric, value, baseline, bound):
            incident.move(
                "recovered",
                now,
                f"{live} is within {rules.allowance(metric)} of the pre-drift {baseline:.3f}",
                **numbers,
            )
            self.counts["incidents_recovered"] += 1
            closed = self._close(now, int(serving_version or incident.version), None, "recovered")
            return "recovered", closed, incident.transitions[-1]["reason"]
        if incident.state == "needs_human":
            return "wait", None, ""
        since = (now - (incident.last_emitted_at or incident.opened_at)).total_seconds()
        due = (
            incident.state == "recovering"  # the new version did not bring the metric back
            or incident.verdict_at is not None  # the retrain was rejected
            or (self.retrigger_s > 0 and since >= self.retrigger_s)  # it never came
        )
        if not due:
            return "wait", None, ""
        side = "above" if metric == "rmse" else "below"
        sign = "+" if metric == "rmse" else "-"
        why = f"{live} is {side} the pre-drift {baseline:.3f} {sign} {rules.allowance(metric)}"
        if incident.attempts >= rules.max_attempts:
            incident.move(
                "needs_human", now, f"{why} after {incident.attempts} attempts", **numbers
            )
            self.counts["incidents_need_human"] += 1
            return "needs_human", incident, why
        return "next", incident, why

    def due_for_reemission(self, now: datetime, serving_version: int | None) -> Incident | None:
        """Without a pre-drift accuracy to recover to: the open incident, when its DriftDetected
        is due again: it has been published, it is of the serving version and ``retrigger_s``
        passed since the last emission (or check)."""
        incident = self.incident
        if incident is None or not incident.published or self.retrigger_s <= 0:
            return None
        if incident.baseline_value is not None:
            return None  # paced by the live metric: ``on_live``
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
        return self.next_attempt(incident, now, test, observations, "the drift persists")

    def next_attempt(
        self,
        incident: Incident,
        now: datetime,
        test: TestResult | None,
        observations: int,
        reason: str,
        *,
        version: int | None = None,
        mark: int | None = None,
    ) -> DriftDetected:
        """The incident's DriftDetected again: same correlation, incident id and onset, new
        event id, ``attempt`` + 1, caused by the previous emission; the current numbers when a
        stream test is given; of the serving ``version`` when given."""
        previous = incident.drift_event()
        numbers = (
            {
                "statistic": test.statistic,
                "threshold": test.threshold,
                "reference_value": test.reference_value,
                "current_value": test.current_value,
                "window_size": test.n_current,
            }
            if test is not None
            else {}
        )
        event = DriftDetected(
            **(
                previous.model_dump(exclude={"event_id", "occurred_at", "causation_id"})
                | {
                    "causation_id": previous.event_id,
                    "attempt": incident.attempts + 1,
                    "detected_at": now,
                    "onset_at": previous.onset_at or incident.opened_at,
                    "observations": observations,
                    "version": version or previous.version,
                    **numbers,
                }
            )
        )
        incident.attempts += 1
        incident.event = event.model_dump(mode="json")
        incident.published = False
        incident.last_emitted_at = now
        incident.verdict_at = None
        if mark is not None:
            incident.mark = mark
        incident.emitted_event_ids.append(str(event.event_id))
        incident.move("retraining", now, reason, attempt=incident.attempts)
        self.counts["retriggers"] += 1
        return event


def _short(text: str, limit: int = 120) -> str:
    """A promotion's reason (every gate's numbers) cut down for an incident's transition."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
