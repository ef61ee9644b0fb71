"""Detectors and incident rules on synthetic streams (pure, no I/O)."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

from modelbus_contracts import FeatureStats
from modelbus_monitor.detectors import ERROR_STREAM, StreamConfig
from modelbus_monitor.detectors import Stream as DriftStream
from modelbus_monitor.domain import DetectorConfig, ModelMonitor, Outcome
from modelbus_monitor.join import LabelPoint, PredictionPoint
from modelbus_monitor.quality import bounds_for, quality_issues

T0 = datetime(2026, 1, 1, tzinfo=UTC)
REFERENCE = {
    "x": FeatureStats(count=1000, mean=0.0, std=1.0, min=-4.0, max=4.0),
    "y": FeatureStats(count=1000, mean=10.0, std=2.0, min=2.0, max=18.0),
}


class Stream:
    """Feeds one model monitor with predictions and labels at a given error rate."""

    def __init__(self, monitor: ModelMonitor, seed: int = 7) -> None:
        self.monitor = monitor
        self.rng = random.Random(seed)
        self.now = T0
        self.outcomes: list[Outcome] = []

    def run(
        self,
        n: int,
        error_rate: float,
        x_mean: float = 0.0,
        version: int = 1,
        served_by: str = "champion",
        label_first: bool = False,
    ) -> None:
        for _ in range(n):
            self.now += timedelta(milliseconds=50)
            pid = uuid.uuid4().hex
            predicted = int(self.rng.random() < 0.5)
            truth = 1 - predicted if self.rng.random() < error_rate else predicted
            features = {"x": self.rng.gauss(x_mean, 1.0), "y": self.rng.gauss(10.0, 2.0)}
            point = PredictionPoint(
                pid, version, served_by, predicted, features, uuid.uuid4(), self.now
            )
            label = LabelPoint(pid, truth, uuid.uuid4(), self.now)
            self.feed(point, label, label_first)

    def feed(self, point: PredictionPoint, label: LabelPoint, label_first: bool) -> None:
        if label_first:
            self.outcomes.append(self.monitor.observe_label(label, self.now))
        self.outcomes.append(self.monitor.observe_prediction(point, self.now, uuid.uuid4()))
        if not label_first:
            self.outcomes.append(self.monitor.observe_label(label, self.now))

    def alarms(self) -> list:
        return [(a, d) for o in self.outcomes for a, d in o.alarms]

    def opened(self) -> list:
        return [o.opened for o in self.outcomes if o.opened is not None]


def monitor(reference=REFERENCE, **overrides) -> ModelMonitor:
    m = ModelMonitor("churn", DetectorConfig(**overrides))
    m.adopt(1, reference)
    return m


def test_stationary_stream_raises_no_alarm():
    stream = Stream(monitor(), seed=11)
    stream.run(20_000, 0.10)
    assert stream.alarms() == []
    status = stream.monitor.status()
    assert status["observations"] == 20_000
    assert 0.08 < status["error_rate"] < 0.12


def test_error_rate_up_opens_exactly_one_incident_and_suppresses_the_rest():
    stream = Stream(monitor(), seed=3)
    stream.run(3000, 0.10)
    stream.run(3000, 0.45, label_first=True)
    opened = stream.opened()
    assert len(opened) == 1
    incident = opened[0]
    event = incident.drift_event()
    assert event.feature == "__error__"
    assert event.current_value > event.reference_value
    assert event.statistic > event.threshold  # the confirming two-proportion z-test
    assert event.correlation_id == uuid.UUID(incident.incident_id)
    assert event.observations > 3000
    assert event.window_size < event.observations
    assert event.detector == "adwin"
    assert incident.evidence["test"] == "two_proportion_z"
    assert incident.evidence["p_value"] < 0.001
    dispositions = [d for _, d in stream.alarms()]
    assert dispositions[0] == "opened"
    assert dispositions.count("opened") == 1
    assert stream.monitor.incident is incident
    assert incident.suppressed_alarms == dispositions.count("suppressed_open")


def test_drift_event_causation_is_the_tipping_event():
    stream = Stream(monitor(feature_drift_enabled=False), seed=5)
    stream.run(2000, 0.05)
    stream.run(1000, 0.6)
    [incident] = stream.opened()
    outcome = next(o for o in stream.outcomes if o.opened is incident)
    assert outcome.joined is not None
    assert str(outcome.joined.tipping_event_id) == incident.causation_id
    assert incident.drift_event().causation_id == outcome.joined.tipping_event_id


def test_error_rate_going_down_raises_nothing():
    stream = Stream(monitor(), seed=4)
    stream.run(3000, 0.45)
    stream.run(3000, 0.05)
    assert stream.opened() == []
    assert stream.monitor.error.changes >= 1  # ADWIN saw the change; we chose to ignore it


def test_feature_mean_shift_of_one_std_raises_a_feature_drift():
    stream = Stream(monitor(), seed=9)
    stream.run(2000, 0.10)
    stream.run(1000, 0.10, x_mean=1.0)
    [incident] = stream.opened()
    assert incident.evidence["feature"] == "x"
    assert incident.evidence["current_value"] > incident.evidence["reference_value"]


def test_feature_shift_down_also_counts():
    stream = Stream(monitor(), seed=9)
    stream.run(2000, 0.10)
    stream.run(1000, 0.10, x_mean=-1.0)
    [incident] = stream.opened()
    assert incident.evidence["feature"] == "x"
    assert incident.evidence["current_value"] < incident.evidence["reference_value"]


def test_no_alarm_before_min_observations():
    stream = Stream(monitor(error_min_observations=5000, feature_drift_enabled=False), seed=3)
    stream.run(300, 0.05)
    stream.run(2000, 0.7)
    assert stream.opened() == []
    assert stream.monitor.error.changes >= 1


def test_feature_detectors_stay_off_without_a_reference():
    m = ModelMonitor("churn", DetectorConfig())
    m.adopt(1, None)
    stream = Stream(m, seed=9)
    stream.run(1000, 0.10, x_mean=3.0)
    assert stream.opened() == []
    assert m.features == {}
    m.set_reference(REFERENCE)
    stream.run(500, 0.10, x_mean=0.0)
    stream.run(500, 0.10, x_mean=1.5)
    assert [i.evidence["feature"] for i in stream.opened()] == ["x"]


def test_promotion_closes_the_incident_resets_and_starts_a_cooldown():
    m = monitor(feature_drift_enabled=False, cooldown_s=600)
    stream = Stream(m, seed=3)
    stream.run(2000, 0.10)
    stream.run(2000, 0.5)
    [incident] = stream.opened()
    closed = m.serve(2, REFERENCE, stream.now, event_id="evt-1", occurred_at=stream.now)
    assert closed is incident
    assert (closed.status, closed.closed_by_version, closed.closed_by_event_id) == (
        "closed",
        2,
        "evt-1",
    )
    assert m.incident is None
    assert (m.serving_version, m.error.observations) == (2, 0)
    # old-version predictions no longer reach the detectors
    stream.run(200, 0.9, version=1)
    assert m.error.observations == 0
    assert m.counts["ignored_not_serving_version"] == 200
    # v2 drifts inside the cooldown: counted, not opened
    stream.run(2000, 0.05, version=2)
    stream.run(2000, 0.6, version=2)
    assert len(stream.opened()) == 1
    assert "suppressed_cooldown" in [d for _, d in stream.alarms()]


def test_drift_after_cooldown_opens_a_new_incident():
    m = monitor(feature_drift_enabled=False, cooldown_s=1)
    stream = Stream(m, seed=3)
    stream.run(2000, 0.10)
    stream.run(2000, 0.5)
    m.serve(2, REFERENCE, stream.now)
    stream.run(2000, 0.05, version=2)
    stream.run(2000, 0.6, version=2)
    first, second = stream.opened()
    assert first.incident_id != second.incident_id
    assert second.version == 2


def test_stale_promotion_does_not_close_a_newer_incident():
    m = monitor(feature_drift_enabled=False)
    stream = Stream(m, seed=3)
    stream.run(2000, 0.10)
    stream.run(2000, 0.5)
    [incident] = stream.opened()
    assert m.serve(1, REFERENCE, stream.now, occurred_at=T0) is None
    assert m.incident is incident


def test_only_champion_and_fallback_reach_the_detectors():
    m = monitor(feature_drift_enabled=False)
    stream = Stream(m, seed=2)
    stream.run(100, 0.1, served_by="shadow")
    stream.run(100, 0.1, served_by="canary", label_first=True)
    stream.run(50, 0.1, served_by="fallback")
    assert m.error.observations == 50
    assert m.counts["ignored_served_by_shadow"] == 100
    assert m.counts["ignored_served_by_canary"] == 100
    assert m.joiner.pending == {"predictions": 0, "labels": 0}


def test_quality_checks_count_missing_non_finite_and_out_of_range():
    bounds = bounds_for(REFERENCE)
    issues = quality_issues({"x": 99.0, "y": float("nan")}, bounds)
    assert [(i.check, i.feature) for i in issues] == [("out_of_range", "x"), ("non_finite", "y")]
    assert issues[0].high == 7.0
    missing = quality_issues({"x": 0.0}, bounds)
    assert [(i.check, i.feature) for i in missing] == [("missing", "y")]
    assert quality_issues({"x": 6.9, "y": 10.0}, bounds, outlier_z=10) == []


def test_quality_alert_at_most_once_per_cooldown_with_counts_and_examples():
    m = monitor(cooldown_s=60)
    alerts = []
    for i in range(20):
        now = T0 + timedelta(seconds=i)
        features = {"x": 50.0, "y": 10.0}
        point = PredictionPoint(f"p{i}", 1, "champion", 1, features, uuid.uuid4(), now)
        alert = m.observe_prediction(point, now, uuid.uuid4()).quality
        alerts.append(alert)
    sent = [a for a in alerts if a is not None]
    assert len(sent) == 1
    assert (sent[0].check, sent[0].feature, sent[0].count) == ("out_of_range", "x", 1)
    later = T0 + timedelta(seconds=61)
    point = PredictionPoint("late", 1, "champion", 1, {"x": 50.0}, uuid.uuid4(), later)
    second = m.observe_prediction(point, later, uuid.uuid4()).quality
    assert second is not None
    assert second.count == 19 + 2  # 19 held back during the cooldown, then x and a missing y
    assert "missing=1" in second.detail and "out_of_range=20" in second.detail
    assert len(second.examples) == 5
    assert second.examples[0]["prediction_id"] == "p1"


def test_error_stream_ignores_a_drop():
    config = StreamConfig(min_observations=0, direction="up")
    stream = DriftStream(ERROR_STREAM, "error", config)
    alarms = [stream.update(1.0) for _ in range(500)] + [stream.update(0.0) for _ in range(500)]
    assert [a for a in alarms if a is not None] == []
    assert stream.changes >= 1


def test_redelivered_prediction_feeds_nothing_twice():
    m = monitor(feature_min_observations=0)
    point = PredictionPoint("p1", 1, "champion", 1, {"x": 50.0, "y": 10.0}, uuid.uuid4(), T0)
    first = m.observe_prediction(point, T0, uuid.uuid4())
    again = m.observe_prediction(point, T0 + timedelta(seconds=120), uuid.uuid4())
    assert first.quality is not None and again.quality is None
    assert m.features["x"].observations == 1
    assert (m.counts["predictions"], m.counts["duplicate_predictions"]) == (1, 1)
    m.observe_label(LabelPoint("p1", 1, uuid.uuid4(), T0), T0)
    m.observe_prediction(point, T0, uuid.uuid4())
    assert (m.error.observations, m.features["x"].observations) == (1, 1)
