"""The columnar telemetry decoder: same accepted events, values and dead-letter reasons as
decoding every record with pydantic; bad records reach the DLQ with their reason through the
real bus; the service ends in the same state whichever path the events took."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime

import orjson
import pytest

from modelbus_contracts import (
    ContractError,
    FeatureStats,
    LabelObserved,
    PredictionMade,
    decode,
    encode,
)
from modelbus_contracts.api import AliasesView, ModelView, VersionView
from modelbus_embedded.testing import ConsumedRecord
from modelbus_monitor.adapters import FakeRegistry, MemoryIncidentStore
from modelbus_monitor.domain import DetectorConfig
from modelbus_monitor.handlers import GROUP, subscribe
from modelbus_monitor.metrics import MonitorMetrics
from modelbus_monitor.service import MonitorService
from modelbus_monitor.telemetry import (
    LabelBatch,
    PredictionBatch,
    decode_labels,
    decode_labels_by_record,
    decode_predictions,
    decode_predictions_by_record,
)
from modelbus_platform.bus import EventBus, MemoryProcessedEvents, RecordingPublisher

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


def raw_of(event, offset: int = 0, *, value=None, headers=None, drop=(), **extra) -> ConsumedRecord:
    record = encode(event)
    hdrs = [(k, v.encode()) for k, v in record.headers.items() if k not in drop]
    if headers:
        hdrs = [(k, v) for k, v in hdrs if k not in headers] + list(headers.items())
    body = value if value is not None else record.value
    if extra:
        data = orjson.loads(body) | extra
        body = orjson.dumps({k: v for k, v in data.items() if v is not DROP})
    return ConsumedRecord(record.topic, 0, offset, record.key, body, hdrs)


DROP = object()


def prediction(pid: str = "p1", **overrides) -> PredictionMade:
    fields = {
        "producer": "scorer",
        "model_name": "churn",
        "prediction_id": pid,
        "version": 1,
        "features": {"x": 0.25, "y": 10.5},
        "score": 0.7,
        "label": 1,
        "latency_ms": 1.5,
    }
    return PredictionMade(**(fields | overrides))


def label(pid: str = "p1", value: int = 1, **overrides) -> LabelObserved:
    return LabelObserved(
        **({"producer": "up", "model_name": "churn", "prediction_id": pid, "label": value})
        | overrides
    )


def bad_and_odd_predictions() -> list[ConsumedRecord]:
    """Valid records in canonical and unusual shapes, and invalid ones of every kind."""
    p = prediction
    upper = str(uuid.uuid4()).upper().encode()
    structured = encode(p("s1"))
    body = orjson.loads(structured.value) | {
        "specversion": "1.0",
        "type": "prediction.made.v1",
        "id": str(uuid.uuid4()),
        "source": "ext",
        "time": "2026-03-01T10:00:00+02:00",
    }
    records = [
        raw_of(p("ok1")),
        raw_of(p("ints"), features={"x": 1, "y": 2}),
        raw_of(p("string-number"), features={"x": "1.5", "y": 2.0}),
        raw_of(p("score"), score=1.5),
        raw_of(p("version"), version=0),
        raw_of(p("bool-label"), label=True),
        raw_of(p("float-version"), version=2.0),
        raw_of(p("extra"), unexpected=1),
        raw_of(p("missing"), prediction_id=DROP),
        raw_of(p("nan"), value=b'{"x": NaN}'),
        raw_of(p("not-json"), value=b"not json"),
        raw_of(p("array"), value=b"[1, 2]"),
        raw_of(p("huge"), value=encode(p("huge")).value.replace(b"0.25", b"1e999")),
        raw_of(p("upper-id"), headers={"ce_id": upper}),
        raw_of(p("bad-id"), headers={"ce_id": b"not-a-uuid"}),
        raw_of(p("no-id"), drop=("ce_id",)),
        raw_of(p("bad-day"), headers={"ce_time": b"2026-02-30T00:00:00Z"}),
        raw_of(p("offset-time"), headers={"ce_time": b"2026-03-01T10:00:00.5+02:00"}),
        raw_of(p("wrong-type"), headers={"ce_type": b"label.observed.v1"}),
        raw_of(p("caps"), headers={"Content-Type": b"application/json"}, drop=("content-type",)),
        raw_of(p("bad-name"), model_name="no spaces allowed"),
        raw_of(p("subject"), model_name=DROP),
        raw_of(p("shadow"), served_by="shadow", shadow_of="ok1"),
        raw_of(p("bad-served"), served_by="nobody"),
        raw_of(p("negative-latency"), latency_ms=-1.0),
        raw_of(p("non-utf8"), headers={"ce_source": b"\xff\xfe"}),
        ConsumedRecord(
            structured.topic,
            0,
            0,
            structured.key,
            orjson.dumps(body),
            [("content-type", b"application/cloudevents+json")],
        ),
        raw_of(p("ok2")),
    ]
    for offset, raw in enumerate(records):
        raw.offset = offset
    return records


def pydantic_path(raws, event_cls):
    """The reference: every record through ``modelbus_contracts.decode``."""
    accepted, rejected = [], []
    for raw in raws:
        try:
            accepted.append((raw, decode(raw.headers, raw.value, expected=event_cls)))
        except ContractError as exc:
            rejected.append((raw, str(exc)))
    return accepted, rejected


def test_prediction_decoder_accepts_and_rejects_exactly_what_pydantic_does():
    raws = bad_and_odd_predictions()
    expected, expected_rejected = pydantic_path(raws, PredictionMade)
    batch, accepted, rejected = decode_predictions(raws)
    assert accepted == [raw for raw, _ in expected]
    assert rejected == expected_rejected
    assert {raw.offset for raw, _ in rejected} >= {3, 4, 7, 8, 9, 10, 12, 14, 16, 18, 20, 23}
    reference = PredictionBatch.of(event for _, event in expected)
    no_id = [raw.offset for raw in accepted].index(15)  # pydantic makes up an id for it
    assert batch.event_ids.pop(no_id) != reference.event_ids.pop(no_id)
    assert batch == reference
    assert batch.features[1] == {"x": 1.0, "y": 2.0}
    assert batch.features[2] == {"x": 1.5, "y": 2.0}  # pydantic's coercion, through the fallback
    for reason in (r for _, r in rejected):
        assert reason  # every dead letter has its reason


def test_a_clean_batch_takes_the_batch_path_with_the_same_result():
    rng = random.Random(3)
    events = [
        prediction(
            f"p{i}",
            features={"x": rng.gauss(0, 1), "y": rng.gauss(10, 2)},
            causation_id=uuid.uuid4() if i % 2 else None,
            served_by=rng.choice(["champion", "fallback", "canary"]),
        )
        for i in range(200)
    ]
    raws = [raw_of(e, i) for i, e in enumerate(events)]
    fast = decode_predictions(raws)
    assert fast == decode_predictions_by_record(raws)
    assert fast == (PredictionBatch.of(events), raws, [])
    labels = [label(f"p{i}", i % 2) for i in range(200)]
    raws = [raw_of(e, i) for i, e in enumerate(labels)]
    assert decode_labels(raws) == decode_labels_by_record(raws)
    assert decode_labels(raws) == (LabelBatch.of(labels), raws, [])


@pytest.mark.parametrize(
    "raw",
    [
        raw_of(label(), label=2),
        raw_of(label(), prediction_id=""),
        raw_of(label(), prediction_id=DROP),
        raw_of(label(), extra="x"),
        raw_of(label(), value=b"{}"),
        raw_of(label(), headers={"ce_correlationid": b"x"}),
        raw_of(label(), headers={"ce_type": b"prediction.made.v1"}),
        raw_of(label(), headers={"ce_specversion": b"0.3"}),
    ],
)
def test_label_decoder_dead_letters_bad_records_with_pydantics_reason(raw):
    good = raw_of(label("p2"), 1)
    raws = [good, raw]
    expected, expected_rejected = pydantic_path(raws, LabelObserved)
    batch, accepted, rejected = decode_labels(raws)
    assert rejected == expected_rejected and len(rejected) == 1
    assert accepted == [good]
    assert batch == LabelBatch.of(event for _, event in expected)


def test_label_decoder_takes_pydantics_coercions_through_the_fallback():
    raws = [raw_of(label("p1"), 0), raw_of(label("p2"), 1, label=True), raw_of(label("p3"), 2)]
    batch, accepted, rejected = decode_labels(raws)
    assert (batch.labels, accepted, rejected) == ([1, 1, 1], raws, [])


# -- through the bus and the service ---------------------------------------------------------


class FakeBroker:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, dict]] = []

    async def publish(self, value, topic, key=None, headers=None):
        self.published.append((topic, value, headers or {}))


REFERENCE = {
    "x": FeatureStats(count=1000, mean=0.0, std=1.0, min=-4.0, max=4.0),
    "y": FeatureStats(count=1000, mean=10.0, std=2.0, min=2.0, max=18.0),
}


def make_service() -> MonitorService:
    registry = FakeRegistry()
    registry.models["churn"] = ModelView(
        name="churn", aliases=AliasesView(model_name="churn", champion=1)
    )
    registry.versions[("churn", 1)] = VersionView.model_construct(
        model_name="churn", version=1, reference=REFERENCE
    )
    return MonitorService(
        DetectorConfig(feature_min_observations=50, error_min_observations=50),
        publisher=RecordingPublisher(),
        incidents=MemoryIncidentStore(),
        registry=registry,
        metrics=MonitorMetrics(f"t-{uuid.uuid4().hex[:6]}"),
        clock=lambda: T0,
    )


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
    subscribe(bus, service)
    raws = bad_and_odd_predictions()
    labels = [raw_of(label(pid), 100 + i) for i, pid in enumerate(("ok1", "ok2", "ints"))]
    labels.append(raw_of(label("ok1"), 200, label=7))
    await bus.process_batch(GROUP, bus._groups[GROUP], raws + labels)
    _, expected_rejected = pydantic_path(raws, PredictionMade)
    dead = [
        (h["x-dlq-offset"], h["x-dlq-reason"], h["x-dlq-attempts"]) for _, _, h in broker.published
    ]
    assert [topic for topic, _, _ in broker.published] == ["prediction.made.v1.dlq"] * len(
        expected_rejected
    ) + ["label.observed.v1.dlq"]
    assert dead[:-1] == [(str(r.offset), f"contract: {why}", "0") for r, why in expected_rejected]
    assert dead[-1][0] == "200" and "label" in dead[-1][1]
    status = service.status("churn")
    assert status is not None
    assert status["joined"] == 3


async def test_the_service_ends_in_the_same_state_on_either_path():
    """Columns decoded by the fast path vs pydantic events one by one (the slow path)."""
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
        preds = [raw_of(e, i) for i, e in enumerate(predictions[chunk])]
        await fast.on_prediction_batch(decode_predictions(preds)[0])
        await fast.on_label_batch(decode_labels([raw_of(e) for e in labels[chunk]])[0])
        for event in predictions[chunk]:
            await slow.on_prediction(event)
        for event in labels[chunk]:
            await slow.on_label(event)
    a, b = fast.status("churn"), slow.status("churn")
    assert a is not None and b is not None
    opened = a.pop("open_incident"), b.pop("open_incident")
    assert a == b
    assert opened[0] is not None and opened[1] is not None
    assert opened[0]["evidence"] == opened[1]["evidence"]
    assert fast.history("churn") == slow.history("churn")
    assert len(fast.publisher.events) == len(slow.publisher.events) >= 1


def test_a_value_holding_two_json_documents_cannot_shift_the_batch():
    """The batch is parsed as one JSON array: a record worth two elements must not misalign."""
    good = [raw_of(prediction(f"p{i}"), i) for i in range(3)]
    two = encode(prediction("two")).value
    raws = [*good, raw_of(prediction("x"), 3, value=two + b"," + two)]
    batch, accepted, rejected = decode_predictions(raws)
    assert accepted == good and batch.prediction_ids == ["p0", "p1", "p2"]
    assert [(r.offset, why) for r, why in rejected] == [
        (3, reason) for _, reason in pydantic_path(raws, PredictionMade)[1]
    ]
    assert "JSON" in rejected[0][1]


def test_header_layouts_that_differ_between_records_give_the_same_result():
    """Same headers in another order, an extra optional header, a header with no value."""
    events = [
        prediction(f"p{i}", causation_id=uuid.uuid4() if i % 3 == 0 else None) for i in range(9)
    ]
    raws = [raw_of(e, i) for i, e in enumerate(events)]
    raws[4].headers = list(reversed(raws[4].headers))
    for raw in (raws[:], raws[1:3], [raws[1], raws[4]]):
        assert decode_predictions(raw) == (
            PredictionBatch.of(decode(r.headers, r.value) for r in raw),
            raw,
            [],
        )
    odd = [raw_of(events[1], 20, headers={"ce_causationid": None}), raw_of(events[2], 21)]
    _, accepted, rejected = decode_predictions(odd)
    assert rejected == pydantic_path(odd, PredictionMade)[1] and len(rejected) == 1
    assert accepted == odd[1:]


@pytest.mark.parametrize(
    "time",
    [
        b"2026-03-01T12:00:00.000001Z",
        b"2026-03-01T12:00:00Z",
        b"2026-03-01T12:00:00.5+00:00",
        b"2026-02-29T12:00:00.000001Z",
        b"2026-13-01T12:00:00.000001Z",
        b"2026-03-01T24:00:00.000001Z",
        b"2026-03-01T12:60:00.000001Z",
        b"2026-03-01T12:00:60.000001Z",
        b"2026-03-01 12:00:00.000001Z",
        b"2026-03-01T12:00:00.00000aZ",
        b"0000-03-01T12:00:00.000001Z",
        b"2026-03-01T12:00:00.000001X",
    ],
)
def test_event_times_are_checked_as_pydantic_does(time):
    """The canonical width goes through the byte-matrix check, the rest through the regex."""
    raws = [raw_of(prediction(f"p{i}"), i) for i in range(3)]
    raws[1] = raw_of(prediction("p1"), 1, headers={"ce_time": time})
    expected, expected_rejected = pydantic_path(raws, PredictionMade)
    batch, accepted, rejected = decode_predictions(raws)
    assert (accepted, rejected) == ([raw for raw, _ in expected], expected_rejected)
    assert batch == PredictionBatch.of(event for _, event in expected)


def test_batches_split_by_model_in_order_with_every_column():
    def made(model, pid):
        return PredictionMade(
            model_name=model,
            prediction_id=pid,
            version=1,
            features={"x": 1.0},
            score=0.5,
            label=1,
            latency_ms=0.1,
        )

    batch = PredictionBatch.of([made("b", "1"), made("a", "2"), made("b", "3")])
    labels = LabelBatch.of(
        [LabelObserved(model_name=m, prediction_id=p, label=0) for m, p in [("a", "1"), ("b", "2")]]
    )

    parts = batch.by_model()
    assert list(parts) == ["b", "a"]  # first appearance
    assert parts["b"].prediction_ids == ["1", "3"] and len(parts["b"]) == 2
    assert parts["b"].event_ids == [batch.event_ids[0], batch.event_ids[2]]
    assert {n: p.prediction_ids for n, p in labels.by_model().items()} == {"a": ["1"], "b": ["2"]}
    assert PredictionBatch().by_model() == {} and LabelBatch().by_model() == {}
    single = LabelBatch.of([LabelObserved(model_name="a", prediction_id="9", label=1)])
    assert single.by_model() == {"a": single}
