"""Re-triggering an open incident (a rejected challenger must not stall the loop) and detector
checkpoints (a restart keeps the windows), on the service layer with fakes."""

from __future__ import annotations

import uuid
from datetime import timedelta

from modelbus_contracts import DriftDetected, LabelObserved
from modelbus_monitor.config import DetectorConfig
from modelbus_monitor.testing import MemoryStateStore
from modelbus_platform.offsets import NoOffsets
from modelbus_platform.testing import InlineRelay

from .test_monitor_service import Harness, prediction, promoted, register, send


class FlakyPublisher:
    """Fails the next ``fail`` publishes, then records."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.fail = 0

    async def publish_record(self, record) -> None:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("broker down")
        await self.inner.publish_record(record)


async def drifted(**config) -> Harness:
    h = Harness(feature_drift_enabled=False, retrigger_s=120, **config)
    register(h.registry, "churn", 1)
    await h.stream("churn", 1500, 0.10)
    await h.stream("churn", 1500, 0.50)
    assert len(h.publisher.of(DriftDetected)) == 1
    return h


async def test_open_incident_is_re_emitted_while_the_drift_persists():
    h = await drifted()
    [first] = h.publisher.of(DriftDetected)
    assert first.attempt == 1
    h.clock.now += timedelta(seconds=60)
    await h.service.tick()
    assert len(h.publisher.of(DriftDetected)) == 1, "not due yet"
    h.clock.now += timedelta(seconds=61)
    await h.service.tick()
    first_again, second = h.publisher.of(DriftDetected)
    assert first_again is first
    assert second.correlation_id == first.correlation_id
    assert second.incident_id == first.incident_id
    assert second.event_id != first.event_id
    assert second.causation_id == first.event_id
    assert second.attempt == 2
    assert second.feature == "__error__" and second.current_value > second.reference_value
    stored = await h.store.get(first.incident_id)
    assert (stored.attempts, stored.published, stored.status) == (2, True, "open")
    assert stored.emitted_event_ids == [str(first.event_id), str(second.event_id)]
    await h.service.tick()
    assert len(h.publisher.of(DriftDetected)) == 2, "at most one re-emission per period"
    assert h.metric("modelbus_monitor_incidents_total", model="churn", action="retriggered") == 1


async def test_re_emission_also_happens_on_traffic_and_stops_at_promotion():
    h = await drifted()
    h.clock.now += timedelta(seconds=121)
    await h.stream("churn", 1, 0.5)
    assert [e.attempt for e in h.publisher.of(DriftDetected)] == [1, 2]
    await h.service.on_promoted(promoted("churn", 2, occurred_at=h.clock.now))
    h.clock.now += timedelta(seconds=500)
    await h.service.tick()
    assert [e.attempt for e in h.publisher.of(DriftDetected)] == [1, 2]


async def test_no_re_emission_once_accuracy_is_back_to_normal_the_incident_recovers():
    h = await drifted()
    [event] = h.publisher.of(DriftDetected)
    await h.stream("churn", 1500, 0.10)
    h.clock.now += timedelta(seconds=121)
    await h.service.tick()
    assert len(h.publisher.of(DriftDetected)) == 1
    closed = await h.store.get(event.incident_id)
    assert (closed.status, closed.state, closed.closed_by_version) == ("closed", "recovered", 1)
    assert h.service.models["churn"].counts["incidents_recovered"] == 1


async def test_a_re_emission_during_a_broker_outage_is_published_when_it_answers():
    h = await drifted()
    flaky = FlakyPublisher(h.publisher)
    relay = h.service.events = InlineRelay([h.store.outbox], flaky)
    flaky.fail = 1
    h.clock.now += timedelta(seconds=121)
    await h.service.tick()  # the re-emission is written with the incident; the publish fails
    incident = h.service.models["churn"].incident
    assert incident is not None and incident.attempts == 2
    pending_id = incident.event["event_id"]
    assert [e.attempt for e in h.publisher.of(DriftDetected)] == [1]
    await relay.drain()  # the broker answers again
    events = h.publisher.of(DriftDetected)
    assert [e.attempt for e in events] == [1, 2]
    assert str(events[1].event_id) == pending_id


async def test_retrigger_disabled_with_zero():
    h = Harness(feature_drift_enabled=False, retrigger_s=0)
    register(h.registry, "churn", 1)
    await h.stream("churn", 1500, 0.10)
    await h.stream("churn", 1500, 0.50)
    h.clock.now += timedelta(days=1)
    await h.service.tick()
    assert len(h.publisher.of(DriftDetected)) == 1


# -- checkpoints -------------------------------------------------------------------------------


async def test_checkpoint_restores_the_windows_after_a_restart():
    h = Harness()
    states = MemoryStateStore()
    h.service.states = states
    register(h.registry, "churn", 1)
    await h.service.rebuild()
    for i in range(1200):
        h.clock.now += timedelta(milliseconds=10)
        await send(h.service, _pred(i, h.rng.gauss(0.0, 1.0)))
    await h.stream("churn", 800, 0.10)
    assert await h.service.checkpoint() == 1
    before = h.service.status("churn")["detectors"]
    snap = states.docs["churn"]
    assert snap["serving_version"] == 1
    assert {(s["feature"], s["kind"]) for s in snap["streams"]} == {
        ("__error__", "error"),
        ("x", "mean"),
        ("x", "scale"),
    }

    restarted = h.build(DetectorConfig())
    restarted.states = states
    await restarted.rebuild()
    after = restarted.status("churn")["detectors"]
    for key in ("__error__", "x", "x:scale"):
        assert after[key]["observations"] == before[key]["observations"]
        assert after[key]["window"] == before[key]["window"]
        assert after[key]["reference_size"] == before[key]["reference_size"]
    monitor = restarted.models["churn"]
    # the replayed detector still knows the level: a 1-sigma shift right after the restart is
    # confirmed against the restored reference, without a new warm-up of min_observations points
    for i in range(400):
        h.clock.now += timedelta(milliseconds=10)
        await send(restarted, _pred(10_000 + i, h.rng.gauss(1.0, 1.0)))
    assert monitor.incident is not None and monitor.incident.evidence["feature"] == "x"


class RecordingOffsets(NoOffsets):
    """The telemetry group's offsets: what the service committed (as a count)."""

    def __init__(self) -> None:
        self.commits = 0

    async def commit(self, covered) -> bool:
        self.commits += 1
        return True


class FailingStates(MemoryStateStore):
    async def save(self, snapshot: dict) -> None:
        raise ConnectionError("MongoDB is down")


async def test_a_restart_continues_the_join_and_the_counts_where_the_checkpoint_left_them():
    h = Harness(feature_drift_enabled=False)
    states, offsets = MemoryStateStore(), RecordingOffsets()
    h.service.states, h.service.offsets = states, offsets
    register(h.registry, "churn", 1)
    await h.service.rebuild()
    waiting = [prediction("churn", f"w{i}", 1) for i in range(40)]
    early = [LabelObserved(model_name="churn", prediction_id=f"e{i}", label=0) for i in range(7)]
    await send(h.service, *waiting)
    await send(h.service, *early)
    await h.stream("churn", 30, 0.0)
    assert await h.service.checkpoint() == 1 and offsets.commits == 1

    restarted = h.build(DetectorConfig(feature_drift_enabled=False))
    restarted.states = states
    await restarted.rebuild()
    status = restarted.status("churn")
    assert status["pending"] == {"predictions": 40, "labels": 7}
    assert status["joined"] == 30
    await send(
        restarted,
        *[LabelObserved(model_name="churn", prediction_id=f"w{i}", label=0) for i in range(40)],
    )
    await send(restarted, *[prediction("churn", f"e{i}", 1) for i in range(7)])
    status = restarted.status("churn")
    assert status["pending"] == {"predictions": 0, "labels": 0}
    assert status["joined"] == 30 + 40 + 7  # every pair once: none lost, none twice


async def test_a_checkpoint_that_could_not_be_saved_commits_nothing():
    h = Harness(feature_drift_enabled=False)
    offsets = RecordingOffsets()
    h.service.states, h.service.offsets = FailingStates(), offsets
    register(h.registry, "churn", 1)
    await h.service.rebuild()
    await h.stream("churn", 20, 0.0)
    assert await h.service.checkpoint() == 0
    assert offsets.commits == 0  # the records stay uncommitted: a crash replays them


async def test_checkpoint_of_another_version_is_not_restored():
    h = Harness(feature_drift_enabled=False)
    states = MemoryStateStore()
    h.service.states = states
    register(h.registry, "churn", 1)
    await h.service.rebuild()
    await h.stream("churn", 300, 0.1)
    await h.service.checkpoint()
    register(h.registry, "churn", 2)
    restarted = h.build(DetectorConfig(feature_drift_enabled=False))
    restarted.states = states
    await restarted.rebuild()
    assert restarted.status("churn")["observations"] == 0


def _pred(i: int, x: float):
    return prediction("churn", f"c{i}-{uuid.uuid4().hex[:6]}", 1, x=x)


async def test_tick_checkpoints_periodically_or_never():
    h = Harness(feature_drift_enabled=False)
    register(h.registry, "churn", 1)
    states = MemoryStateStore()
    h.service.states = states
    await h.service.rebuild()
    await h.service.tick()
    await h.service.tick()
    assert states.saves == 1, "every checkpoint_s (60 s), not every tick"
    h.clock.now += timedelta(seconds=61)
    await h.service.tick()
    assert states.saves == 2
    never = h.build(DetectorConfig())
    never.states, never.checkpoint_every = MemoryStateStore(), None
    await never.rebuild()
    await never.tick()
    assert never.states.saves == 0
    assert await never.checkpoint() == 1  # shutdown still checkpoints
