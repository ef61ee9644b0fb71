"""One model's monitor (kernel + policy) on synthetic streams, through its batch entry points:
which changes open an incident, which do not, and what a promotion does (pure, no I/O)."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from modelbus_contracts import FeatureStats
from modelbus_monitor.config import DetectorConfig
from modelbus_monitor.detectors import ERROR_STREAM, StreamConfig
from modelbus_monitor.detectors import Stream as DriftStream
from modelbus_monitor.domain import Advance, BatchOutcome, ModelMonitor
from modelbus_monitor.policy import Incident

T0 = datetime(2026, 1, 1, tzinfo=UTC)
REFERENCE = {
    "x": FeatureStats(count=1000, mean=0.0, std=1.0, min=-4.0, max=4.0),
    "y": FeatureStats(count=1000, mean=10.0, std=2.0, min=2.0, max=18.0),
}


class Feed:
    """Feeds one model monitor predictions and their labels at a given error rate, ``batch``
    predictions (then their labels, or the labels first) at a time; after each batch, like the
    service, the incident's DriftDetected goes out and the incident is moved on (``steps``)."""

    def __init__(self, monitor: ModelMonitor, seed: int = 7, batch: int = 25) -> None:
        self.monitor = monitor
        self.rng = random.Random(seed)
        self.batch = batch
        self.now = T0
        self.sent: list[tuple[list[str], BatchOutcome]] = []  # (event ids, outcome) per batch
        self.steps: list[Advance] = []

    def run(
        self,
        n: int,
        error_rate: float,
        x_mean: float = 0.0,
        version: int = 1,
        served_by: str = "champion",
        label_first: bool = False,
    ) -> None:
        for start in range(0, n, self.batch):
            size = min(self.batch, n - start)
            self.now += timedelta(milliseconds=50 * size)
            ids = [uuid.uuid4().hex for _ in range(size)]
            predicted = [int(self.rng.random() < 0.5) for _ in ids]
            truth = [1 - p if self.rng.random() < error_rate else p for p in predicted]
            features = [
                {"x": self.rng.gauss(x_mean, 1.0), "y": self.rng.gauss(10.0, 2.0)} for _ in ids
            ]
            if label_first:
                self.labels(ids, truth)
            self.predictions(ids, predicted, features, version=version, served_by=served_by)
            if not label_first:
                self.labels(ids, truth)
            self.advance()

    def advance(self) -> Advance:
        """What the service does after a batch: emit (mark published) and move on."""
        incident = self.monitor.incident
        if incident is not None and not incident.published:
            incident.emitted(self.now)
        step = self.monitor.advance(self.now)
        if step.event is not None and self.monitor.incident is not None:
            self.monitor.incident.emitted(self.now)
        self.steps.append(step)
        return step

    def events(self) -> list:
        return [s.event for s in self.steps if s.event is not None]

    def closed(self) -> list[Incident]:
        return [s.closed for s in self.steps if s.closed is not None]

    def predictions(
        self,
        ids: list[str],
        predicted: list[int],
        features: list[dict[str, float]],
        *,
        version: int = 1,
        served_by: str = "champion",
    ) -> BatchOutcome:
        event_ids = [str(uuid.uuid4()) for _ in ids]
        outcome = self.monitor.observe_predictions(
            self.now,
            prediction_ids=ids,
            versions=[version] * len(ids),
            served_by=[served_by] * len(ids),
            labels=predicted,
            features=features,
            event_ids=event_ids,
            correlation_ids=[str(uuid.uuid4()) for _ in ids],
        )
        self.sent.append((event_ids, outcome))
        return outcome

    def labels(self, ids: list[str], truth: list[int]) -> BatchOutcome:
        event_ids = [str(uuid.uuid4()) for _ in ids]
        outcome = self.monitor.observe_labels(
            self.now, prediction_ids=ids, labels=truth, event_ids=event_ids
        )
        self.sent.append((event_ids, outcome))
        return outcome

    def alarms(self) -> list:
        return [a for _, o in self.sent for row in o.notable() for a in row.alarms]

    def opened(self) -> list[Incident]:
        return [row.opened for _, o in self.sent for row in o.notable() if row.opened]

    def cause_of(self, incident: Incident) -> str:
        """The event id of the prediction or label whose row opened ``incident``."""
        for event_ids, outcome in self.sent:
            for row, result in outcome.rows.items():
                if result.opened is incident:
                    return event_ids[row]
        raise AssertionError("not opened here")


def monitor(reference=REFERENCE, **overrides) -> ModelMonitor:
    m = ModelMonitor("churn", DetectorConfig(**overrides))
    m.adopt(1, reference)
    return m


def test_stationary_stream_raises_no_alarm():
    feed = Feed(monitor(), seed=11, batch=200)
    feed.run(20_000, 0.10)
    assert feed.alarms() == []
    status = feed.monitor.status()
    assert status["observations"] == 20_000
    assert 0.08 < status["error_rate"] < 0.12


@pytest.mark.parametrize("batch", [1, 40])
def test_error_rate_up_opens_exactly_one_incident_and_suppresses_the_rest(batch):
    feed = Feed(monitor(), seed=3, batch=batch)
    feed.run(3000, 0.10)
    feed.run(3000, 0.45, label_first=True)
    [incident] = feed.opened()
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
    dispositions = [d for _, d in feed.alarms()]
    assert dispositions[0] == "opened"
    assert dispositions.count("opened") == 1
    assert feed.monitor.incident is incident
    assert incident.suppressed_alarms == dispositions.count("suppressed_open")


def test_drift_event_causation_is_the_tipping_event():
    feed = Feed(monitor(feature_drift_enabled=False), seed=5)
    feed.run(2000, 0.05)
    feed.run(1000, 0.6)
    [incident] = feed.opened()
    tipping = feed.cause_of(incident)  # the label that completed the pair
    assert incident.causation_id == tipping
    assert str(incident.drift_event().causation_id) == tipping


def test_error_rate_going_down_raises_nothing():
    feed = Feed(monitor(), seed=4)
    feed.run(3000, 0.45)
    feed.run(3000, 0.05)
    assert feed.opened() == []
    assert feed.monitor.kernel.error.changes >= 1  # ADWIN saw the change; we chose to ignore it


@pytest.mark.parametrize("shift", [1.0, -1.0])
def test_feature_mean_shift_of_one_std_either_way_raises_a_feature_drift(shift):
    feed = Feed(monitor(), seed=9)
    feed.run(2000, 0.10)
    feed.run(1000, 0.10, x_mean=shift)
    [incident] = feed.opened()
    assert incident.evidence["feature"] == "x"
    moved = incident.evidence["current_value"] - incident.evidence["reference_value"]
    assert moved * shift > 0


def test_no_alarm_before_min_observations():
    feed = Feed(monitor(error_min_observations=5000, feature_drift_enabled=False), seed=3)
    feed.run(300, 0.05)
    feed.run(2000, 0.7)
    assert feed.opened() == []
    assert feed.monitor.kernel.error.changes >= 1


def test_feature_detectors_stay_off_without_a_reference():
    m = ModelMonitor("churn", DetectorConfig())
    m.adopt(1, None)
    feed = Feed(m, seed=9)
    feed.run(1000, 0.10, x_mean=3.0)
    assert feed.opened() == []
    assert m.kernel.features == {}
    m.adopt(1, REFERENCE)
    feed.run(500, 0.10, x_mean=0.0)
    feed.run(500, 0.10, x_mean=1.5)
    assert [i.evidence["feature"] for i in feed.opened()] == ["x"]


def test_promotion_moves_the_incident_to_recovering_and_recovery_closes_it():
    m = monitor(feature_drift_enabled=False, cooldown_s=600)
    feed = Feed(m, seed=3)
    feed.run(2000, 0.10)
    feed.run(2000, 0.5)
    [incident] = feed.opened()
    assert incident.baseline_accuracy == pytest.approx(0.9, abs=0.03)
    assert incident.state == "retraining"
    assert m.serve(2, REFERENCE, feed.now, event_id="evt-1", occurred_at=feed.now) is None
    assert m.incident is incident
    assert (incident.state, incident.live_version, incident.status) == ("recovering", 2, "open")
    assert (m.serving_version, m.kernel.error.observations) == (2, 0)
    # old-version predictions no longer reach the detectors
    feed.run(200, 0.9, version=1)
    assert m.kernel.error.observations == 0
    assert m.counts["ignored_not_serving_version"] == 200
    feed.run(275, 0.05, version=2)
    assert feed.closed() == [], "judged on recovery_min_points (300) labelled points"
    feed.run(25, 0.05, version=2)
    [closed] = feed.closed()
    assert closed is incident and m.incident is None
    assert (closed.status, closed.state, closed.closed_by_version) == ("closed", "recovered", 2)
    assert [t["state"] for t in closed.transitions] == [
        "detected",
        "retraining",
        "recovering",
        "recovered",
    ]
    assert closed.live_points == 300 and closed.live_accuracy >= closed.baseline_accuracy - 0.03
    # v2 drifts inside the cooldown: counted, not opened
    feed.run(2000, 0.05, version=2)
    feed.run(2000, 0.6, version=2)
    assert len(feed.opened()) == 1
    assert "suppressed_cooldown" in [d for _, d in feed.alarms()]


def test_drift_after_cooldown_opens_a_new_incident():
    m = monitor(feature_drift_enabled=False, cooldown_s=1)
    feed = Feed(m, seed=3)
    feed.run(2000, 0.10)
    feed.run(2000, 0.5)
    m.serve(2, REFERENCE, feed.now)
    feed.run(2000, 0.05, version=2)
    feed.run(2000, 0.6, version=2)
    first, second = feed.opened()
    assert first.incident_id != second.incident_id
    assert first.state == "recovered"
    assert second.version == 2


def test_a_new_version_that_does_not_recover_is_followed_by_a_larger_retrain():
    m = monitor(feature_drift_enabled=False, incident_max_attempts=3)
    feed = Feed(m, seed=3)
    feed.run(2000, 0.10)
    feed.run(2000, 0.5)
    [incident] = feed.opened()
    first = incident.drift_event()
    assert first.onset_at == first.detected_at and first.attempt == 1
    m.serve(2, REFERENCE, feed.now)
    feed.run(300, 0.4, version=2)  # v2 is better than v1 after the drift, not good enough
    [second] = feed.events()
    assert (second.attempt, second.version, second.onset_at) == (2, 2, first.onset_at)
    assert second.correlation_id == first.correlation_id
    assert second.causation_id == first.event_id
    assert (
        incident.state == "retraining"
        and "below the pre-drift" in (incident.transitions[-1]["reason"])
    )
    m.serve(3, REFERENCE, feed.now)
    feed.run(300, 0.3, version=3)
    [_, third] = feed.events()
    assert third.attempt == 3 and third.onset_at == first.onset_at
    m.serve(4, REFERENCE, feed.now)
    feed.run(600, 0.3, version=4)
    assert len(feed.events()) == 2, "attempts ran out: nothing more is requested"
    assert incident.state == "needs_human" and incident.status == "open"
    assert incident.transitions[-1]["live_accuracy"] == pytest.approx(0.7, abs=0.05)
    # a human's model that brings accuracy back still closes it
    m.serve(5, REFERENCE, feed.now)
    feed.run(300, 0.08, version=5)
    [closed] = feed.closed()
    assert closed is incident and closed.state == "recovered"


def test_a_rejected_retrain_is_retried_once_new_data_arrived_and_not_without():
    m = monitor(feature_drift_enabled=False, retrigger_s=120)
    feed = Feed(m, seed=3)
    feed.run(2000, 0.10)
    feed.run(1000, 0.5)
    [incident] = feed.opened()
    # no verdict for retrigger_s: re-requested once (data did arrive since the first request);
    # then, with no more traffic, never again however long it waits
    feed.now += timedelta(seconds=121)
    assert feed.advance().event is not None
    for _ in range(3):
        feed.now += timedelta(days=1)
        assert feed.advance().event is None
    mark = m.kernel.error.observations
    assert m.policy.on_rejected(incident.incident_id, 2, ["paired_test failed"], feed.now)
    assert incident.transitions[-1]["reason"] == "v2 rejected"
    feed.run(275, 0.5)
    assert len(feed.events()) == 1, "the next rung waits for recovery_min_points new points"
    feed.run(25, 0.5)
    [_, event] = feed.events()
    assert event.attempt == 3 and incident.mark == mark + 300
    assert incident.verdict_at is None


def test_without_labels_before_the_drift_a_promotion_resolves_the_incident():
    m = monitor(feature_drift_enabled=True)
    feed = Feed(m, seed=4)
    feed.run(1500, 0.1, x_mean=0.0, label_first=True)
    m.kernel.error.reference.clear()  # as if no label had ever arrived
    feed.run(1500, 0.1, x_mean=2.0)
    [incident] = feed.opened()
    assert incident.baseline_accuracy is None
    closed = m.serve(2, REFERENCE, feed.now, event_id="evt-2")
    assert closed is incident
    assert (closed.state, closed.status, closed.closed_by_event_id) == (
        "resolved",
        "closed",
        "evt-2",
    )


def test_stale_promotion_does_not_close_a_newer_incident():
    m = monitor(feature_drift_enabled=False)
    feed = Feed(m, seed=3)
    feed.run(2000, 0.10)
    feed.run(2000, 0.5)
    [incident] = feed.opened()
    assert m.serve(1, REFERENCE, feed.now, occurred_at=T0) is None
    assert m.incident is incident
    assert m.counts["stale_promotions"] == 1


def test_only_champion_and_fallback_reach_the_detectors():
    m = monitor(feature_drift_enabled=False)
    feed = Feed(m, seed=2)
    feed.run(100, 0.1, served_by="shadow")
    feed.run(100, 0.1, served_by="canary", label_first=True)
    feed.run(50, 0.1, served_by="fallback")
    assert m.kernel.error.observations == 50
    assert m.counts["ignored_served_by_shadow"] == 100
    assert m.counts["ignored_served_by_canary"] == 100
    assert m.kernel.joiner.pending == {"predictions": 0, "labels": 0}


def test_quality_alert_at_most_once_per_cooldown_with_counts_and_examples():
    m = monitor(cooldown_s=60)
    feed = Feed(m)
    alerts = []
    for i in range(20):
        feed.now = T0 + timedelta(seconds=i)
        outcome = feed.predictions([f"p{i}"], [1], [{"x": 50.0, "y": 10.0}])
        alerts += [row.quality for row in outcome.notable() if row.quality]
    [sent] = alerts
    assert (sent.check, sent.feature, sent.count) == ("out_of_range", "x", 1)
    feed.now = T0 + timedelta(seconds=61)
    [row] = feed.predictions(["late"], [1], [{"x": 50.0}]).notable()
    second = row.quality
    assert second is not None
    assert second.count == 19 + 2  # 19 held back during the cooldown, then x and a missing y
    assert "missing=1" in second.detail and "out_of_range=20" in second.detail
    assert "predictions checked: 20" in second.detail
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
    feed = Feed(m)
    point = (["p1"], [1], [{"x": 50.0, "y": 10.0}])
    first = feed.predictions(*point)
    feed.now += timedelta(seconds=120)
    again = feed.predictions(*point)
    assert first.notable()[0].quality is not None and again.notable() == []
    assert m.kernel.features["x"].observations == 1
    assert (m.counts["predictions"], m.counts["duplicate_predictions"]) == (1, 1)
    feed.labels(["p1"], [1])
    feed.predictions(*point)
    assert (m.kernel.error.observations, m.kernel.features["x"].observations) == (1, 1)
