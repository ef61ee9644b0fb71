"""The monitor on telemetry batches: bad records reach the DLQ with the contract's reason
through the real bus while good ones reach the monitor, and the service ends in the same state
whether the events came as decoded columns or one by one as pydantic events."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime

from modelbus_contracts import (
    Columns,
    FeatureStats,
    LabelObserved,
    PredictionMade,
    decode_batch,
)
from modelbus_contracts.api import VersionView
from modelbus_contracts.testing import DROP, label, prediction, record_of, reference
from modelbus_monitor.bootstrap import GROUP, SPEC
from modelbus_monitor.config import DetectorConfig, MonitorSettings
from modelbus_monitor.metrics import MonitorMetrics
from modelbus_monitor.service import MonitorService
from modelbus_monitor.testing import MemoryIncidentStore
from modelbus_platform.bus import EventBus, MemoryProcessedEvents
from modelbus_platform.kit import bind
from modelbus_platform.testing import FakeRegistry, InlineRelay, RecordingPublisher

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
REFERENCE = {
    "x": FeatureStats(count=1000, mean=0.0, std=1.0, min=-4.0, max=4.0),
    "y": FeatureStats(count=1000, mean=10.0, std=2.0, min=2.0, max=18.0),
}


def make_service() -> MonitorService:
    registry = FakeRegistry()
    registry.put(
        VersionView.model_construct(model_name="churn", version=1, reference=REFERENCE),
        champion=True,
    )
    publisher, incidents = RecordingPublisher(), MemoryIncidentStore()
    return MonitorService(
        DetectorConfig(feature_min_observations=50, error_min_observations=50),
        publisher=publisher,
        events=InlineRelay([incidents.outbox], publisher),
        incidents=incidents,
        registry=registry,
        metrics=MonitorMetrics(f"t-{uuid.uuid4().hex[:6]}"),
        clock=lambda: T0,
    )


class FakeBroker:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, dict]] = []

    async def publish(self, value, topic, key=None, headers=None):
        self.published.append((topic, value, headers or {}))


async def test_bad_records_reach_the_dlq_with_their_reason_and_good_ones_the_monitor():
    service = make_service()
    await service.rebuild()
    bus = EventBus(
        "127.0.0.1:1",
        service="monitor",
        metrics=service.metrics,
        processed=MemoryProcessedEvents(),
        backoff_s=0,
    )
    broker = FakeBroker()
    bus.broker = broker  # type: ignore[assignment]
    bind(bus, SPEC, service, MonitorSettings())
    p = prediction
    raws = [
        record_of(p("ok1")),
        record_of(p("ints"), features={"x": 1, "y": 2}),
        record_of(p("score"), score=1.5),
        record_of(p("version"), version=0),
        record_of(p("extra"), unexpected=1),
        record_of(p("missing"), prediction_id=DROP),
        record_of(p("not-json"), value=b"not json"),
        record_of(p("bad-id"), headers={"ce_id": b"not-a-uuid"}),
        record_of(p("subject"), model_name=DROP),
        record_of(p("bad-served"), served_by="nobody"),
        record_of(p("ok2")),
    ]
    labels = [record_of(label(pid), 100 + i) for i, pid in enumerate(("ok1", "ok2", "ints"))]
    labels.append(record_of(label("ok1"), 200, value=b'{"model_name":"churn","label":7}'))
    for offset, raw in enumerate(raws):
        raw.offset = offset
    await bus.process_batch(GROUP, bus._groups[GROUP], raws + labels)
    expected_rejected = reference(PredictionMade, raws).rejected
    assert len(expected_rejected) == 7
    dead = [
        (h["x-dlq-offset"], h["x-dlq-reason"], h["x-dlq-attempts"]) for _, _, h in broker.published
    ]
    assert [topic for topic, _, _ in broker.published] == ["prediction.made.v1.dlq"] * len(
        expected_rejected
    ) + ["label.observed.v1.dlq"]
    assert dead[:-1] == [(str(r.offset), f"contract: {why}", "0") for r, why in expected_rejected]
    assert dead[-1][0] == "200"
    status = service.status("churn")
    assert status is not None
    assert status["joined"] == 3


async def test_the_service_ends_in_the_same_state_on_either_path():
    """Columns decoded by the contracts vs pydantic events one by one."""
    rng = random.Random(5)
    predictions, labels = [], []
    for i in range(3000):
        shift = 1.5 if i > 2000 else 0.0  # a mean shift on x: alarms and an incident
        features = {"x": rng.gauss(shift, 1), "y": rng.gauss(10, 2)}
        if i == 7:
            features["x"] = 100.0  # a quality alert
        predictions.append(prediction(f"p{i}", features=features, label=i % 2))
        labels.append(label(f"p{i}", i % 2 if rng.random() > 0.1 else 1 - i % 2))
    fast, slow = make_service(), make_service()
    await fast.rebuild()
    await slow.rebuild()
    for start in range(0, 3000, 500):
        chunk = slice(start, start + 500)
        preds = [record_of(e, i) for i, e in enumerate(predictions[chunk])]
        await fast.on_prediction_batch(decode_batch(PredictionMade, preds).columns)
        labelled = [record_of(e, i) for i, e in enumerate(labels[chunk])]
        await fast.on_label_batch(decode_batch(LabelObserved, labelled).columns)
        for event in predictions[chunk]:  # one by one, built from pydantic events
            await slow.on_prediction_batch(Columns[PredictionMade].of([event]))
        for event in labels[chunk]:
            await slow.on_label_batch(Columns[LabelObserved].of([event]))
    a, b = fast.status("churn"), slow.status("churn")
    assert a is not None and b is not None
    assert (a.pop("open_incident") is None) == (b.pop("open_incident") is None)
    assert a == b
    incidents = await fast.incidents.list("churn"), await slow.incidents.list("churn")
    assert len(incidents[0]) == len(incidents[1]) >= 1
    assert [(i.evidence, i.state) for i in incidents[0]] == [
        (i.evidence, i.state) for i in incidents[1]
    ]
    assert fast.history("churn") == slow.history("churn")
    assert len(fast.publisher.events) == len(slow.publisher.events) >= 1
