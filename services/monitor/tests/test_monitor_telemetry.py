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
from modelbus_contracts.api import VersionView
from modelbus_embedded.testing import ConsumedRecord
from modelbus_monitor.bootstrap import GROUP, SPEC
from modelbus_monitor.config import DetectorConfig, MonitorSettings
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
from modelbus_monitor.testing import MemoryIncidentStore
from modelbus_platform.bus import EventBus, MemoryProcessedEvents, RecordingPublisher
from modelbus_platform.kit import bind
from modelbus_platform.testing import FakeRegistry, InlineRelay

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
            await slow.on_prediction_batch(PredictionBatch.of([event]))
        for event in labels[chunk]:
            await slow.on_label_batch(LabelBatch.of([event]))
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


# -- every fast path against pydantic, one oddity at a time -----------------------------------

DECODERS = {
    PredictionMade: (decode_predictions, decode_predictions_by_record, PredictionBatch),
    LabelObserved: (decode_labels, decode_labels_by_record, LabelBatch),
}


def _kind(value):
    """A number's kind (an int feature is the float pydantic makes of it); anything else its
    exact type, so a bool or a string standing for a number shows."""
    return float if type(value) in (int, float) else type(value)


def typed(batch):
    out = {}
    for name, column in vars(batch).items():
        if name == "features":
            out[name] = [{k: (_kind(v), v) for k, v in f.items()} for f in column]
        else:
            out[name] = [(type(v), v) for v in column]
    return out


def assert_as_pydantic(raws, event_cls=PredictionMade, *, made_up=()):
    """The batch decoder and the record-by-record one accept what pydantic accepts, with its
    values and exact types, and reject the rest with its reasons. ``made_up``: columns that
    pydantic fills with fresh UUIDs (a missing id header), not compared."""
    expected, expected_rejected = pydantic_path(raws, event_cls)
    batch_decoder, by_record, batch_cls = DECODERS[event_cls]
    reference = batch_cls.of(event for _, event in expected)
    for decoder in (batch_decoder, by_record):
        batch, accepted, rejected = decoder(raws)
        assert accepted == [raw for raw, _ in expected], decoder.__name__
        assert rejected == expected_rejected, decoder.__name__
        got, want = typed(batch), typed(reference)
        for name in made_up:
            del got[name], want[name]
        assert got == want, decoder.__name__
    return expected_rejected


def among_good(raw, event=prediction):
    """The odd record in the middle of good ones, its offset in order."""
    raws = [raw_of(event("g0"), 0), raw, raw_of(event("g2"), 2)]
    raws[1].offset = 1
    return raws


def with_body(event, **replace):
    """The encoded JSON value with byte-level replacements (numbers orjson.dumps refuses)."""
    value = encode(event).value
    for old, new in replace.items():
        assert old.encode() in value
        value = value.replace(old.encode(), new.encode())
    return value


@pytest.mark.parametrize(
    "fields",
    [
        {"features": {"x": True, "y": 1.0}},
        {"features": {"x": False, "y": 1.0}},
        {"features": {"x": "1.5", "y": 1.0}},
        {"features": {"x": None, "y": 1.0}},
        {"features": {"x": {"a": 1.0}, "y": 1.0}},
        {"features": {"x": [1.0], "y": 1.0}},
        {"features": {"x": 1, "y": 2}},
        {"features": {"x": 1, "y": 0.5}},
        {"features": {"x": 0.5, "y": True}},
        {"features": {}},
        {"features": {"x": "nan"}},
        {"features": [1.0, 2.0]},
        {"features": None},
        {"score": True},
        {"score": "0.5"},
        {"score": 1},
        {"score": 1.5},
        {"score": -0.1},
        {"score": None},
        {"latency_ms": "1"},
        {"latency_ms": -1.0},
        {"latency_ms": 0},
        {"latency_ms": False},
        {"version": True},
        {"version": 2.0},
        {"version": "2"},
        {"version": 0},
        {"version": -3},
        {"label": True},
        {"label": 1.0},
        {"label": "1"},
        {"label": None},
        {"request_id": 1},
        {"request_id": "r-1"},
        {"request_id": ["r"]},
        {"shadow_of": False},
        {"shadow_of": "g0", "served_by": "shadow"},
        {"prediction_id": 5},
        {"prediction_id": ""},
        {"prediction_id": None},
        {"served_by": "CHAMPION"},
        {"served_by": ["champion"]},
        {"served_by": {"a": 1}},
        {"served_by": None},
        {"source": {"a": 1}},
        {"source": ["http"]},
        {"source": "kafka"},
        {"source": "stream"},
        {"model_name": 1},
        {"model_name": ["churn"]},
        {"model_name": ""},
        {"model_name": "no spaces"},
        {"model_name": "x" * 201},
        {"model_name": "ünï"},
        {"model_name": "other.model-2"},
        {"model_name": DROP},
        {"served_by": DROP, "source": DROP, "request_id": DROP, "shadow_of": DROP},
        {"source": DROP, "bogus": 1},  # as many keys as the fields, one of them unknown
        {"label": DROP, "features_v2": {"x": 1.0}},
        {"event_id": str(uuid.uuid4())},  # the header's wins
        {"causation_id": "not-a-uuid"},  # no header: pydantic reads this one
        {"producer": "someone"},
        {"bogus": 1},  # every field and one more
    ],
)
def test_one_odd_prediction_is_decoded_as_pydantic_does(fields):
    assert_as_pydantic(among_good(raw_of(prediction("odd"), **fields)))


@pytest.mark.parametrize(
    "fields",
    [
        {"features": {"x": 1, "y": 2}},
        {"features": {"x": True, "y": 1.0}},
        {"features": {"x": "1.5", "y": 1.0}},
        {"score": 1, "latency_ms": 0},
        {"label": True},
        {"model_name": DROP},
        {"served_by": DROP, "source": DROP, "request_id": DROP, "shadow_of": DROP},
        {"source": DROP, "bogus": 1},
        {"served_by": ["champion"]},
    ],
)
def test_a_batch_where_every_prediction_has_the_same_oddity(fields):
    raws = [raw_of(prediction(f"p{i}"), i, **fields) for i in range(4)]
    assert_as_pydantic(raws)


@pytest.mark.parametrize(
    "replace",
    [
        {"0.25": str(10**30)},  # beyond 64 bits: orjson makes it a float
        {"0.25": str(2**64 - 1)},
        {"0.25": str(-(2**63))},
        {"0.25": "1e999"},
        {"0.25": "-1e999"},
        {"0.25": "NaN"},
        {"0.25": "Infinity"},
        {'"score":0.7': '"score":1e999'},
        {'"score":0.7': '"score":NaN'},
        {'"latency_ms":1.5': '"latency_ms":1e999'},
        {'"latency_ms":1.5': '"latency_ms":' + str(10**30)},
        {'"version":1': '"version":' + str(10**30)},
        {'"version":1': '"version":' + str(2**64 - 1)},
        {'"label":1': '"label":' + str(2**64 - 1)},
        {'"x":0.25': '"x":0.25,"x":true'},  # a repeated key: the last one counts
        {'"x":0.25': '"x":true,"x":0.25'},
    ],
)
def test_numbers_orjson_or_pydantic_may_refuse_are_decoded_as_pydantic_does(replace):
    raw = raw_of(prediction("odd"), value=with_body(prediction("odd"), **replace))
    assert_as_pydantic(among_good(raw))
    every = [raw_of(prediction(f"p{i}"), i, value=raw.value) for i in range(3)]
    assert_as_pydantic(every)


def test_what_the_decoder_relies_on_in_orjson():
    """Ints beyond 64 bits become floats and infinities are refused (so every int feature is
    finite as a float), and a raw line break cannot be inside a string (``_SEPARATOR``)."""
    assert type(orjson.loads(str(2**64).encode())) is float
    assert type(orjson.loads(str(2**64 - 1).encode())) is int
    for bad in (b"1e999", b"NaN", b"Infinity", b'"a\nb"', b'[{"a":1,\nnull,\n"b":2}]'):
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(bad)


@pytest.mark.parametrize(
    "fields",
    [
        {"label": 2},
        {"label": True},
        {"label": 1.0},
        {"label": "1"},
        {"label": None},
        {"prediction_id": ""},
        {"prediction_id": 5},
        {"prediction_id": None},
        {"model_name": DROP},
        {"model_name": 3},
        {"model_name": ["churn"]},
        {"model_name": "bad name"},
        {"label": DROP, "labels": 1},  # three keys, one unknown
        {"model_name": DROP, "extra": 1},
        {"extra": "x"},
    ],
)
def test_one_odd_label_is_decoded_as_pydantic_does(fields):
    assert_as_pydantic(among_good(raw_of(label("odd"), **fields), label), LabelObserved)
    every = [raw_of(label(f"p{i}"), i, **fields) for i in range(3)]
    assert_as_pydantic(every, LabelObserved)


# -- headers -----------------------------------------------------------------------------------


def test_header_layouts_all_give_pydantics_result():
    """Every record with the headers in another order, as tuples (aiokafka), without the
    optional ones, with a causation id on some."""
    events = [prediction(f"p{i}", causation_id=uuid.uuid4() if i % 2 else None) for i in range(6)]
    raws = [raw_of(e, i) for i, e in enumerate(events)]
    for raw in raws:
        raw.headers = tuple(reversed(raw.headers))
    assert_as_pydantic(raws)
    bare = [raw_of(e, i, drop=("ce_specversion", "content-type")) for i, e in enumerate(events)]
    assert_as_pydantic(bare)
    no_subject = [raw_of(e, i, drop=("ce_subject",)) for i, e in enumerate(events)]
    assert_as_pydantic(no_subject)


@pytest.mark.parametrize(
    "header",
    ["ce_type", "ce_time", "ce_source", "ce_specversion", "ce_subject", "content-type"],
)
def test_a_record_missing_a_header_is_decoded_as_pydantic_does(header):
    assert_as_pydantic(among_good(raw_of(prediction("odd"), drop=(header,))))
    no_name = raw_of(prediction("odd"), drop=(header,), model_name=DROP)
    assert_as_pydantic(among_good(no_name))


def test_a_record_missing_its_correlation_id_is_decoded_as_pydantic_does():
    raws = among_good(raw_of(prediction("odd"), drop=("ce_correlationid",)))
    assert_as_pydantic(raws, made_up=("correlation_ids",))


@pytest.mark.parametrize(
    "headers",
    [
        {"ce_type": b"label.observed.v1"},
        {"ce_type": b"prediction.made.v2"},
        {"ce_specversion": b"0.3"},
        {"ce_specversion": b""},
        {"content-type": b"text/plain"},
        {"content-type": b"application/cloudevents+json"},
        {"ce_source": b""},
        {"ce_source": b"other"},
        {"ce_subject": b"other"},
        {"ce_subject": b"\xff"},
        {"ce_causationid": b""},
        {"ce_causationid": b"not-a-uuid"},
        {"ce_causationid": str(uuid.uuid4()).upper().encode()},
        {"ce_correlationid": b"x"},
        {"ce_id": str(uuid.uuid4()).replace("-", "").encode()},
        {"ce_id": str(uuid.uuid4()).replace("-", "", 1).encode() + b"-"},
        {"ce_id": str(uuid.uuid4()).encode() + b" "},
        {"Ce_Id": str(uuid.uuid4()).encode()},
        {"x-trace": b"1"},
    ],
)
def test_a_header_value_that_differs_in_one_record_is_decoded_as_pydantic_does(headers):
    """The headers every record shares are taken once per batch: one that differs counts."""
    assert_as_pydantic(among_good(raw_of(prediction("odd"), headers=headers)))
    no_name = raw_of(prediction("odd"), headers=headers, model_name=DROP)
    assert_as_pydantic(among_good(no_name))


def in_place(raw, name, value):
    """The record with one header's value replaced where it stands (the layout unchanged)."""
    raw.headers = [(k, value if k == name else v) for k, v in raw.headers]
    assert name in dict(raw.headers)
    return raw


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ce_type", b"label.observed.v1"),
        ("ce_specversion", b"0.3"),
        ("content-type", b"text/plain"),
        ("ce_source", b""),
        ("ce_source", b"\xff"),
        ("ce_subject", b"other"),
        ("ce_subject", b"bad name"),
        ("ce_correlationid", b"x"),
        ("ce_id", b"x"),
        ("ce_time", b"2026-03-01T12:00:00.000001+01:00"),
    ],
)
def test_a_header_that_differs_in_one_record_of_the_same_layout(name, value):
    """Same headers in the same order everywhere, so taken as columns (a header with the
    same value in every record is taken once): the one record that differs still counts."""
    assert_as_pydantic(among_good(in_place(raw_of(prediction("odd")), name, value)))
    raws = [raw_of(prediction(f"p{i}"), i, model_name=DROP) for i in range(5)]
    in_place(raws[2], name, value)
    assert_as_pydantic(raws)
    labels = [raw_of(label(f"p{i}"), i, model_name=DROP) for i in range(5)]
    in_place(labels[3], name, value)
    assert_as_pydantic(labels, LabelObserved)


@pytest.mark.parametrize("where", ["first", "last"])
@pytest.mark.parametrize(
    "header",
    [
        ("ce_type", b"label.observed.v1"),
        ("ce_specversion", b"0.3"),
        ("ce_source", b""),
        ("ce_correlationid", b"not-a-uuid"),
        ("ce_time", b"2026-02-30T00:00:00Z"),
        ("ce_subject", b"other"),
    ],
)
def test_a_repeated_header_counts_as_pydantic_counts_it(header, where):
    """Repeated in every record (the same layout everywhere) or in one: the last one wins."""

    def repeated(raw):
        raw.headers = [header, *raw.headers] if where == "first" else [*raw.headers, header]
        return raw

    every = [repeated(raw_of(prediction(f"p{i}"), i, model_name=DROP)) for i in range(3)]
    assert_as_pydantic(every)
    assert_as_pydantic(among_good(repeated(raw_of(prediction("odd")))))


def test_ids_and_times_must_be_one_per_record():
    """A line break inside a header value cannot pass for two ids or times, nor can times of
    uneven widths line up across records."""
    u = str(uuid.uuid4()).encode()
    cut = u[:30] + b"\n" + u[31:]
    two = u + b"\n" + str(uuid.uuid4()).encode()
    for headers in (
        {"ce_id": cut},
        {"ce_id": two},
        {"ce_correlationid": cut},
        {"ce_correlationid": two},
        {"ce_causationid": cut},
        {"ce_causationid": two},
        {"ce_time": b"2026-03-01T12:00:00Z\n2026-03-01T12:00:00Z"},
        {"ce_time": b"2026-03-01T12:00:00.000001Z\n"},
    ):
        assert len(assert_as_pydantic(among_good(raw_of(prediction("odd"), headers=headers)))) == 1
        labels = among_good(raw_of(label("odd"), headers=headers), label)
        assert len(assert_as_pydantic(labels, LabelObserved)) == 1
    shifted = [
        raw_of(prediction("a"), 0, headers={"ce_time": b"2026-03-01T12:00:00.000000"}),
        raw_of(prediction("b"), 1, headers={"ce_time": b"Z2026-03-01T12:00:00.000000Z"}),
    ]
    assert len(assert_as_pydantic(shifted)) == 1
    arabic_one = "\u0661".encode()
    for time in (
        b"2026-03-01T12:00:0" + arabic_one + b"Z",
        b"2026-03-0" + arabic_one + b"T12:00:00Z",
    ):
        assert (
            len(assert_as_pydantic(among_good(raw_of(prediction("x"), headers={"ce_time": time}))))
            == 1
        )


@pytest.mark.parametrize(
    "odd",
    [
        b"2026-03-01T24:00:00.000001Z",
        b"2026-03-01T23:60:00.000001Z",
        b"2026-02-29T12:00:00.000001Z",
        b"2028-02-29T12:00:00.000001Z",
        b"2026-04-31T01:00:00.000001Z",
        b"2026-03-02T00:00:00.000001Z",
    ],
)
def test_times_over_several_hours_and_days_are_checked_as_pydantic_does(odd):
    """Not one date and hour for the whole batch: each distinct one is checked."""
    times = [b"2026-03-01T22:59:59.999999Z", b"2026-03-01T23:00:00.000001Z", odd]
    raws = [raw_of(prediction(f"p{i}"), i, headers={"ce_time": t}) for i, t in enumerate(times * 2)]
    assert_as_pydantic(raws)
    assert_as_pydantic(list(reversed(raws)))


# -- the batch's JSON --------------------------------------------------------------------------


def test_a_value_cut_in_two_cannot_pass_for_one_record():
    """One object cut across two records (at a member's comma, or inside a string) and a
    record with two objects: the elements of the batch's array would line up with the
    records again, but each of these values is bad JSON on its own."""
    whole = encode(prediction("p1")).value
    at_comma = whole.index(b',"version"')
    in_string = whole.index(b'"p1"') + 2
    two = encode(prediction("p3")).value + b"," + encode(prediction("p4")).value
    two_ours = encode(prediction("p3")).value + b",\nnull,\n" + encode(prediction("p4")).value
    for first, second in (
        (whole[:at_comma], whole[at_comma + 1 :]),
        (whole[:in_string], whole[in_string:]),
        (whole[:at_comma] + b",", b"null," + whole[at_comma + 1 :]),
    ):
        for third in (two, two_ours):
            raws = [
                raw_of(prediction("a"), 0, value=first),
                raw_of(prediction("b"), 1, value=second),
                raw_of(prediction("c"), 2, value=third),
                raw_of(prediction("ok"), 3),
            ]
            assert len(assert_as_pydantic(raws)) == 3
    # an array opened in one value and closed in the next, holding a separator: as many
    # elements as the separators need, the records' objects where the records' should be
    good = [encode(prediction(f"p{i}")).value for i in range(3)]
    raws = [
        raw_of(prediction("a"), 0, value=good[0] + b",[1"),
        raw_of(prediction("b"), 1, value=b"2]," + good[1]),
        raw_of(prediction("c"), 2, value=good[2]),
    ]
    assert len(assert_as_pydantic(raws)) == 2
    for value in (b"null", b"", b" ", b"{}", b"[]", b"{} ", b"\n{}"):
        assert_as_pydantic(among_good(raw_of(prediction("x"), value=value)))
        assert_as_pydantic(among_good(raw_of(label("x"), value=value), label), LabelObserved)


def test_clean_batches_take_the_batch_path(monkeypatch):
    """What producers write (and its usual variants) is decoded without the per-record path."""
    import modelbus_monitor.telemetry as telemetry

    def not_here(raws):
        raise AssertionError("took the per-record path")

    monkeypatch.setattr(telemetry, "decode_predictions_by_record", not_here)
    monkeypatch.setattr(telemetry, "decode_labels_by_record", not_here)
    variants = [
        {},
        {"features": {"x": 1, "y": 2}},
        {"model_name": DROP},
        {"served_by": DROP, "source": DROP, "request_id": DROP, "shadow_of": DROP},
        {"request_id": "r", "served_by": "shadow", "shadow_of": "p0", "source": "stream"},
    ]
    for fields in variants:
        raws = [raw_of(prediction(f"p{i}"), i, **fields) for i in range(3)]
        batch, accepted, rejected = decode_predictions(raws)
        assert (accepted, rejected) == (raws, [])
        assert typed(batch) == typed(PredictionBatch.of(decode(r.headers, r.value) for r in raws))
    times = [
        b"2026-03-01T23:59:59.999999Z",
        b"2026-03-02T00:00:00Z",
        b"2026-03-02T01:00:00.5+00:00",
    ]
    raws = [raw_of(prediction(f"p{i}"), i, headers={"ce_time": t}) for i, t in enumerate(times)]
    assert decode_predictions(raws)[1] == raws
    for fields in ({}, {"model_name": DROP}):
        raws = [raw_of(label(f"p{i}"), i, **fields) for i in range(3)]
        batch, accepted, rejected = decode_labels(raws)
        assert (accepted, rejected) == (raws, [])
        assert batch == LabelBatch.of(decode(r.headers, r.value) for r in raws)
