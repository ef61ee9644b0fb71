"""The policy core on its own: eligibility, and the life of an incident (opened, suppressed,
cooled down, re-emitted, closed) and of quality alerts, driven by hand-made signals."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from modelbus_monitor.detectors import DriftAlarm
from modelbus_monitor.detectors import TestResult as StreamTest
from modelbus_monitor.policy import IncidentPolicy, QualityAlerts, ineligibility
from modelbus_monitor.quality import QualityIssue

T0 = datetime(2026, 1, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def alarm(feature: str = "__error__", kind: str = "error") -> DriftAlarm:
    return DriftAlarm(
        detector="adwin",
        feature=feature,
        kind=kind,  # type: ignore[arg-type]
        statistic=5.0,
        threshold=3.1,
        p_value=1e-6,
        reference_value=0.1,
        current_value=0.3,
        window_size=200,
        observations=3000,
        test="two_proportion_z",
    )


def persisting(rejects: bool = True) -> StreamTest:
    statistic = 6.0 if rejects else 1.0
    return StreamTest(statistic, 3.1, 1e-7, 0.1, 0.35, "two_proportion_z", 1000)


def policy(cooldown_s: float = 600, retrigger_s: float = 120) -> IncidentPolicy:
    return IncidentPolicy(
        "churn", producer="monitor", cooldown_s=cooldown_s, retrigger_s=retrigger_s
    )


def cause() -> str:
    return str(uuid.uuid4())


@pytest.mark.parametrize(
    ("version", "served_by", "serving", "reason"),
    [
        (1, "champion", 1, None),
        (1, "fallback", 1, None),
        (1, "shadow", 1, "served_by_shadow"),
        (1, "canary", 1, "served_by_canary"),
        (2, "champion", 1, "not_serving_version"),
        (1, "champion", None, "no_serving_version"),
        (1, "shadow", None, "served_by_shadow"),  # the server is checked first
    ],
)
def test_only_the_serving_versions_champion_and_fallback_are_monitored(
    version, served_by, serving, reason
):
    assert ineligibility(version, served_by, serving) == reason


def test_the_first_alarm_opens_an_incident_whose_id_is_the_correlation_id():
    rules, tipping = policy(), cause()
    disposition, incident = rules.on_alarm(alarm(), tipping, T0, version=3)
    assert disposition == "opened" and incident is rules.incident
    event = incident.drift_event()
    assert str(event.correlation_id) == incident.incident_id == event.incident_id
    assert str(event.causation_id) == incident.causation_id == tipping
    assert (event.model_name, event.version, event.feature, event.attempt) == (
        "churn",
        3,
        "__error__",
        1,
    )
    assert (event.statistic, event.threshold, event.window_size) == (5.0, 3.1, 200)
    assert incident.evidence["test"] == "two_proportion_z" and incident.evidence["kind"] == "error"
    assert incident.emitted_event_ids == [str(event.event_id)]
    assert not incident.published  # the service publishes it, then marks it


def test_alarms_while_an_incident_is_open_are_recorded_on_it():
    rules = policy()
    _, incident = rules.on_alarm(alarm(), cause(), T0, version=1)
    for _ in range(3):
        assert rules.on_alarm(alarm("x", "mean"), cause(), T0, version=1) == (
            "suppressed_open",
            None,
        )
    assert incident.suppressed_alarms == 3
    assert rules.counts == {"incidents_opened": 1, "suppressed_alarms": 3}


def test_a_promotion_closes_the_incident_and_starts_the_cooldown():
    rules = policy(cooldown_s=600)
    _, incident = rules.on_alarm(alarm(), cause(), T0, version=1)
    applies, closed = rules.on_new_version(
        T0 + MINUTE, 2, event_id="evt-1", occurred_at=T0 + MINUTE, reason="promoted: better"
    )
    assert applies and closed is incident and rules.incident is None
    assert (closed.status, closed.closed_by_version, closed.closed_by_event_id) == (
        "closed",
        2,
        "evt-1",
    )
    assert closed.close_reason == "promoted: better"
    assert rules.cooldown_until == T0 + MINUTE + timedelta(seconds=600)


def test_alarms_in_the_cooldown_are_counted_only_and_the_next_one_opens_a_new_incident():
    rules = policy(cooldown_s=600)
    rules.on_alarm(alarm(), cause(), T0, version=1)
    rules.on_new_version(T0, 2, event_id=None, occurred_at=None, reason="promoted")
    assert rules.on_alarm(alarm(), cause(), T0 + 5 * MINUTE, version=2) == (
        "suppressed_cooldown",
        None,
    )
    disposition, second = rules.on_alarm(alarm(), cause(), T0 + 11 * MINUTE, version=2)
    assert disposition == "opened" and second is not None and second.version == 2


def test_a_promotion_without_an_open_incident_applies_and_closes_nothing():
    rules = policy()
    assert rules.on_new_version(T0, 2, event_id=None, occurred_at=T0, reason="x") == (True, None)
    assert rules.cooldown_until is None


def test_a_promotion_older_than_the_open_incident_is_a_replay():
    rules = policy()
    _, incident = rules.on_alarm(alarm(), cause(), T0, version=1)
    applies, closed = rules.on_new_version(
        T0 + MINUTE, 2, event_id="old", occurred_at=T0 - MINUTE, reason="promoted"
    )
    assert (applies, closed) == (False, None)
    assert rules.incident is incident and incident.status == "open"
    assert rules.counts["stale_promotions"] == 1


def test_a_persisting_drift_is_re_emitted_every_retrigger_period():
    rules = policy(retrigger_s=120)
    _, incident = rules.on_alarm(alarm(), cause(), T0, version=1)
    assert rules.due_for_reemission(T0 + 5 * MINUTE, 1) is None, "not published yet"
    incident.published = True
    assert rules.due_for_reemission(T0 + MINUTE, 1) is None, "not due yet"
    assert rules.due_for_reemission(T0 + 3 * MINUTE, 2) is None, "another version serves"
    assert rules.due_for_reemission(T0 + 3 * MINUTE, 1) is incident
    first = incident.drift_event()
    again = rules.reemit(incident, T0 + 3 * MINUTE, persisting(), observations=4000)
    assert again is not None
    assert (again.correlation_id, again.incident_id) == (first.correlation_id, first.incident_id)
    assert again.event_id != first.event_id and again.causation_id == first.event_id
    assert (again.attempt, again.observations, again.current_value) == (2, 4000, 0.35)
    assert again.detected_at == T0 + 3 * MINUTE
    assert incident.attempts == 2 and not incident.published
    assert incident.event["event_id"] == str(again.event_id)
    assert incident.emitted_event_ids == [str(first.event_id), str(again.event_id)]
    incident.published = True
    assert rules.due_for_reemission(T0 + 4 * MINUTE, 1) is None, "next one 120 s later"


def test_a_drift_that_went_away_is_not_re_emitted_but_checked_again_later():
    rules = policy(retrigger_s=120)
    _, incident = rules.on_alarm(alarm(), cause(), T0, version=1)
    incident.published = True
    assert rules.reemit(incident, T0 + 3 * MINUTE, persisting(rejects=False), 4000) is None
    assert rules.reemit(incident, T0 + 3 * MINUTE, None, 4000) is None  # too few points to test
    assert incident.attempts == 1 and incident.last_emitted_at == T0 + 3 * MINUTE
    assert rules.counts["retrigger_skipped"] == 2
    assert rules.due_for_reemission(T0 + 4 * MINUTE, 1) is None
    assert rules.due_for_reemission(T0 + 5 * MINUTE, 1) is incident


def test_re_emission_is_off_with_a_zero_period():
    rules = policy(retrigger_s=0)
    _, incident = rules.on_alarm(alarm(), cause(), T0, version=1)
    incident.published = True
    assert rules.due_for_reemission(T0 + timedelta(days=1), 1) is None


def issue(check: str = "out_of_range", feature: str = "x") -> QualityIssue:
    return QualityIssue(check, feature, 50.0, -7.0, 7.0)  # type: ignore[arg-type]


def quality_alert(alerts: QualityAlerts, at: datetime, issues: list[QualityIssue], pid: str):
    return alerts.on_issues(
        issues,
        at,
        prediction_id=pid,
        version=1,
        event_id=str(uuid.uuid4()),
        correlation_id=str(uuid.uuid4()),
    )


def test_one_quality_alert_per_cooldown_carrying_everything_since_the_last():
    alerts = QualityAlerts("churn", producer="monitor", cooldown_s=60, max_examples=2)
    alerts.checked(10)
    first = quality_alert(alerts, T0, [issue()], "p0")
    assert first is not None
    assert (first.check, first.feature, first.count, first.version) == ("out_of_range", "x", 1, 1)
    assert first.detail == "out_of_range=1; by feature: x=1; predictions checked: 10"
    alerts.checked(5)
    for i in range(3):
        assert quality_alert(alerts, T0 + MINUTE / 2, [issue("missing", "y")], f"q{i}") is None
    second = quality_alert(alerts, T0 + MINUTE, [issue()], "r")
    assert second is not None and second.count == 4
    assert (second.check, second.feature) == ("missing", "y")  # the most frequent
    assert second.detail == (
        "missing=3 out_of_range=1; by feature: x=1 y=3; predictions checked: 5"
    )
    assert [e["prediction_id"] for e in second.examples] == ["q0", "q1"]
    assert alerts.seen == {"out_of_range": 2, "missing": 3}
    assert alerts.counts["quality_alerts"] == 2


def test_a_new_serving_version_forgets_the_issues_not_alerted_yet():
    alerts = QualityAlerts("churn", producer="monitor", cooldown_s=60, max_examples=5)
    quality_alert(alerts, T0, [issue()], "p0")
    quality_alert(alerts, T0, [issue()], "p1")  # held back by the cooldown
    alerts.restart()
    later = quality_alert(alerts, T0 + 2 * MINUTE, [issue("non_finite")], "p2")
    assert later is not None and later.count == 1 and later.check == "non_finite"
