"""Columns and the batch decoder: the derived structs, the batch path taken for what producers
write, and the hand-found cases a batch-at-once decoder can get wrong (values cut across
records, line breaks in ids, times of uneven widths, digits of other scripts, header layouts
that differ between records) — each against the pydantic reference."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import AfterValidator, Field, ValidationError, field_validator

from modelbus_contracts import (
    ALL_EVENTS,
    Columns,
    Event,
    Frozen,
    LabelObserved,
    ModelEvaluated,
    ModelTrained,
    PredictionMade,
    decode,
    decode_batch,
    encode,
)
from modelbus_contracts import columns as columns_module
from modelbus_contracts.codec import data_fields, data_struct
from modelbus_contracts.envelope import is_model_name
from modelbus_contracts.testing import (
    DROP,
    Record,
    assert_as_pydantic,
    label,
    prediction,
    record_of,
    typed,
)

GOLDEN = Path(__file__).parent / "golden"


def among_good(raw: Record, event=prediction) -> list[Record]:
    """The odd record between good ones, offsets in order."""
    raws = [record_of(event("g0"), 0), raw, record_of(event("g2"), 2)]
    raw.offset = 1
    return raws


# -- the derived structs -------------------------------------------------------------------------


@pytest.mark.parametrize("event_cls", ALL_EVENTS, ids=lambda c: c.event_type)
def test_every_event_has_a_struct_with_its_data_fields_and_defaults(event_cls):
    struct = data_struct(event_cls)
    fields = {f.name: f for f in msgspec.structs.fields(struct)}
    assert tuple(fields) == data_fields(event_cls)
    assert struct.__struct_config__.forbid_unknown_fields
    for name, info in event_cls.model_fields.items():
        if name not in fields or name == "model_name":
            continue
        required = fields[name].required
        assert required == info.is_required(), name
        if not required and info.default_factory is None:
            assert fields[name].default == info.default, name


class _Nested(Frozen):
    value: int


class _WithValidator(Event):
    event_type = "test.validator.v1"
    x: int

    @field_validator("x")
    @classmethod
    def _positive(cls, value: int) -> int:
        return value


class _WithUnion(Event):
    event_type = "test.union.v1"
    x: list[int] | str  # unions of scalars are derivable; of containers not


class _WithInfoValidator(Event):
    event_type = "test.info.v1"
    x: Annotated[int, AfterValidator(lambda value, info: value)]


class _WithMultipleOf(Event):
    event_type = "test.multiple.v1"
    x: int = Field(multiple_of=2)


class _WithUnicodeClass(Event):
    event_type = "test.digits.v1"
    x: str = Field(pattern=r"^\d+$")  # Rust's and Python's Unicode tables may differ


class _WithInnerDollar(Event):
    event_type = "test.dollar.v1"
    x: str = Field(pattern=r"^a$|^b$")


@pytest.mark.parametrize(
    "event_cls",
    [
        _WithValidator,
        _WithUnion,
        _WithInfoValidator,
        _WithMultipleOf,
        _WithUnicodeClass,
        _WithInnerDollar,
    ],
)
def test_what_cannot_be_derived_exactly_is_refused_when_the_struct_is_built(event_cls):
    with pytest.raises(TypeError):
        data_struct(event_cls)


def test_patterns_match_as_pydantic_matches_them():
    """Python's ``$`` matches before a final line break, pydantic's does not."""
    struct = data_struct(LabelObserved)
    name_type = msgspec.structs.fields(struct)[0].type
    assert msgspec.convert("churn", name_type) == "churn"
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert("churn\n", name_type)


# -- columns -------------------------------------------------------------------------------------


def test_columns_hold_the_events_values_with_ids_as_strings():
    events = [
        prediction("a", causation_id=uuid.uuid4()),
        prediction("b", model_name="other", served_by="shadow", shadow_of="a"),
    ]
    batch = Columns[PredictionMade].of(events)
    assert type(batch) is Columns[PredictionMade] and len(batch) == 2
    assert batch.names == tuple(PredictionMade.model_fields)
    assert batch.event_id == [str(e.event_id) for e in events]
    assert batch.causation_id == [str(events[0].causation_id), None]
    assert batch.served_by == ["champion", "shadow"]
    assert batch.features == [e.features for e in events]
    evaluated = ModelEvaluated.model_validate_json((GOLDEN / "model.evaluated.v1.json").read_text())
    gates = Columns[ModelEvaluated].of([evaluated]).gates
    assert gates == [evaluated.gates]  # nested models stay models


def test_batches_split_by_model_in_order_with_every_column():
    batch = Columns[PredictionMade].of(
        [prediction("1"), prediction("2", model_name="a"), prediction("3")]
    )
    parts = batch.by_model()
    assert list(parts) == ["churn", "a"]  # first appearance
    assert parts["churn"].prediction_id == ["1", "3"] and len(parts["churn"]) == 2
    assert parts["churn"].event_id == [batch.event_id[0], batch.event_id[2]]
    assert Columns[PredictionMade]().by_model() == {}
    single = Columns[LabelObserved].of([label()])
    assert single.by_model() == {"churn": single}


# -- the batch path ------------------------------------------------------------------------------


def no_per_record_path(monkeypatch):
    def refuse(self, raws):
        raise AssertionError("took the per-record path")

    monkeypatch.setattr(columns_module._Decoding, "decode_by_record", refuse)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"features": {"x": 1, "y": 2}},
        {"model_name": DROP},
        {"served_by": DROP, "source": DROP, "request_id": DROP, "shadow_of": DROP},
        {"request_id": "r", "served_by": "shadow", "shadow_of": "p0", "source": "stream"},
    ],
)
def test_what_producers_write_takes_the_batch_path(monkeypatch, fields):
    events = [prediction(f"p{i}", causation_id=uuid.uuid4() if i % 2 else None) for i in range(3)]
    raws = [record_of(e, i, **fields) for i, e in enumerate(events)]
    expected = [decode(r.headers, r.value) for r in raws]
    no_per_record_path(monkeypatch)
    got = decode_batch(PredictionMade, raws)
    assert (got.accepted, got.rejected) == (raws, [])
    assert typed(got.columns) == typed(Columns[PredictionMade].of(expected))


def test_every_golden_example_takes_the_batch_path(monkeypatch):
    no_per_record_path(monkeypatch)
    for event_cls in ALL_EVENTS:
        event = event_cls.model_validate_json((GOLDEN / f"{event_cls.event_type}.json").read_text())
        got = decode_batch(event_cls, [record_of(event, 0), record_of(event, 1)])
        assert typed(got.columns) == typed(Columns[event_cls].of([event, event]))


@pytest.mark.parametrize(
    "times",
    [
        [b"2026-03-01T23:59:59.999999Z", b"2026-03-02T00:00:00Z", b"2026-03-02T01:00:00.5+00:00"],
        [b"2026-03-01T12:00:00.123Z"] * 3,  # the scorer's clock: milliseconds
    ],
)
def test_times_of_uneven_widths_take_the_batch_path(monkeypatch, times):
    raws = [record_of(prediction(f"p{i}"), i, headers={"ce_time": t}) for i, t in enumerate(times)]
    want = [decode(r.headers, r.value).occurred_at for r in raws]
    no_per_record_path(monkeypatch)
    assert decode_batch(PredictionMade, raws).columns.occurred_at == want


def test_labels_take_the_batch_path(monkeypatch):
    for fields in ({}, {"model_name": DROP}):
        raws = [record_of(label(f"p{i}", i % 2), i, **fields) for i in range(3)]
        expected = Columns[LabelObserved].of(decode(r.headers, r.value) for r in raws)
        no_per_record_path(monkeypatch)
        got = decode_batch(LabelObserved, raws)
        assert (got.columns, got.accepted, got.rejected) == (expected, raws, [])
        monkeypatch.undo()


def test_labels_features_and_outputs_of_every_task_decode_as_pydantic_decodes_them():
    """The scalar unions (a label is a class or a value, a feature a number, a category or
    null): the batch path keeps each value's JSON type exactly as pydantic's smart union."""
    labels = [1, 0, 1.5, 2.0, "setosa", True, "", [1], None, 2**70, -3]
    raws = [record_of(label(f"l{i}"), i) for i in range(len(labels))]
    for raw, value in zip(raws, labels, strict=True):
        raw.value = json.dumps({**json.loads(raw.value), "label": value}).encode()
    got = assert_as_pydantic(LabelObserved, raws)
    assert got.columns.label == [1, 0, 1.5, 2.0, "setosa", 1, float(2**70), -3]  # orjson: a float
    assert [type(v) for v in got.columns.label[:4]] == [int, int, float, float]
    outputs = [
        {"features": {"x": 1, "city": "Paris", "z": None}},
        {"label": "setosa", "score": 0.7, "probabilities": {"setosa": 0.7, "virginica": 0.3}},
        {"label": None, "score": None, "value": -12.5},
        {"probabilities": {"a": 1.5}},
        {"features": {"x": [1]}},
        {"features": {"city": "x" * 1001}},
    ]
    raws = [record_of(prediction(f"p{i}"), i) for i in range(len(outputs))]
    for raw, fields in zip(raws, outputs, strict=True):
        raw.value = json.dumps({**json.loads(raw.value), **fields}).encode()
    got = assert_as_pydantic(PredictionMade, raws)
    assert [raw.offset for raw, _ in got.rejected] == [3, 4, 5]
    assert got.columns.features[0] == {"x": 1.0, "city": "Paris", "z": None}
    assert got.columns.value[2] == -12.5


def test_an_empty_batch():
    got = decode_batch(PredictionMade, [])
    assert (len(got.columns), got.accepted, got.rejected) == (0, [], [])


def test_a_clean_batch_gives_the_events_columns():
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
    raws = [record_of(e, i) for i, e in enumerate(events)]
    got = decode_batch(PredictionMade, raws)
    assert (got.columns, got.accepted, got.rejected) == (
        Columns[PredictionMade].of(events),
        raws,
        [],
    )


# -- hand-found cases ------------------------------------------------------------------------------


def test_bad_and_odd_records_in_one_batch():
    """Valid records in canonical and unusual shapes, invalid ones of every kind, and a
    structured-mode CloudEvent: pydantic's accepted set, values and reasons."""
    p = prediction
    structured = encode(p("s1"))
    body = {
        "specversion": "1.0",
        "type": "prediction.made.v1",
        "id": str(uuid.uuid4()),
        "source": "ext",
        "time": "2026-03-01T10:00:00+02:00",
        "data": json.loads(structured.value),
    }
    raws = [
        record_of(p("ok1")),
        record_of(p("ints"), features={"x": 1, "y": 2}),
        record_of(p("string-number"), features={"x": "1.5", "y": 2.0}),
        record_of(p("score"), score=1.5),
        record_of(p("bool-label"), label=True),
        record_of(p("float-version"), version=2.0),
        record_of(p("nan"), value=b'{"x": NaN}'),
        record_of(p("huge"), value=encode(p("huge")).value.replace(b"0.25", b"1e999")),
        record_of(p("upper-id"), headers={"ce_id": str(uuid.uuid4()).upper().encode()}),
        record_of(p("offset-time"), headers={"ce_time": b"2026-03-01T10:00:00.5+02:00"}),
        record_of(p("caps"), headers={"Content-Type": b"application/json"}, drop=("content-type",)),
        record_of(p("subject"), model_name=DROP),
        record_of(p("non-utf8"), headers={"ce_source": b"\xff\xfe"}),
        Record(
            [("content-type", b"application/cloudevents+json")],
            json.dumps(body).encode(),
            topic=structured.topic,
        ),
        record_of(p("no-id"), drop=("ce_id",)),
        record_of(p("ok2")),
    ]
    for offset, raw in enumerate(raws):
        raw.offset = offset
    expected = assert_as_pydantic(PredictionMade, raws, made_up=("event_id", "correlation_id"))
    assert [raw.offset for raw, _ in expected.rejected] == [3, 6, 7]
    # a feature is a number or a category: a string stays a string (the scorer, which knows
    # the signature, refuses it for a number feature)
    assert expected.columns.features[2] == {"x": "1.5", "y": 2.0}


def test_a_value_cut_in_two_cannot_pass_for_one_record():
    """One object cut across two records (at a member's comma, or inside a string) and a
    record holding two objects, the separators a batch-wide parse might use included."""
    whole = encode(prediction("p1")).value
    at_comma = whole.index(b',"prediction_id"')
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
                record_of(prediction("a"), 0, value=first),
                record_of(prediction("b"), 1, value=second),
                record_of(prediction("c"), 2, value=third),
                record_of(prediction("ok"), 3),
            ]
            assert len(assert_as_pydantic(PredictionMade, raws).rejected) == 3
    good = [encode(prediction(f"p{i}")).value for i in range(3)]
    raws = [
        record_of(prediction("a"), 0, value=good[0] + b",[1"),
        record_of(prediction("b"), 1, value=b"2]," + good[1]),
        record_of(prediction("c"), 2, value=good[2]),
    ]
    assert len(assert_as_pydantic(PredictionMade, raws).rejected) == 2


def test_ids_and_times_must_be_one_per_record():
    """A line break inside a header value cannot pass for two ids or times, nor can times of
    uneven widths line up across records; digits of other scripts are not digits."""
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
        raws = among_good(record_of(prediction("odd"), headers=headers))
        assert len(assert_as_pydantic(PredictionMade, raws).rejected) == 1
        labels = among_good(record_of(label("odd"), headers=headers), label)
        assert len(assert_as_pydantic(LabelObserved, labels).rejected) == 1
    shifted = [
        record_of(prediction("a"), 0, headers={"ce_time": b"2026-03-01T12:00:00.000000"}),
        record_of(prediction("b"), 1, headers={"ce_time": b"Z2026-03-01T12:00:00.000000Z"}),
    ]
    assert len(assert_as_pydantic(PredictionMade, shifted).rejected) == 1
    arabic_one = "\u0661".encode()
    for time in (
        b"2026-03-01T12:00:0" + arabic_one + b"Z",
        b"2026-03-0" + arabic_one + b"T12:00:00Z",
    ):
        raws = among_good(record_of(prediction("x"), headers={"ce_time": time}))
        assert len(assert_as_pydantic(PredictionMade, raws).rejected) == 1


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
    times = [b"2026-03-01T22:59:59.999999Z", b"2026-03-01T23:00:00.000001Z", odd]
    raws = [
        record_of(prediction(f"p{i}"), i, headers={"ce_time": t}) for i, t in enumerate(times * 2)
    ]
    assert_as_pydantic(PredictionMade, raws)
    assert_as_pydantic(PredictionMade, list(reversed(raws)))


def test_header_layouts_that_differ_between_records_give_pydantics_result():
    """Same headers in another order, as tuples, without the optional ones, a header with no
    value, a causation id on some."""
    events = [
        prediction(f"p{i}", causation_id=uuid.uuid4() if i % 3 == 0 else None) for i in range(9)
    ]
    raws = [record_of(e, i) for i, e in enumerate(events)]
    raws[4].headers = list(reversed(raws[4].headers))
    raws[5].headers = tuple(raws[5].headers)  # type: ignore[assignment]
    for batch in (raws[:], raws[1:3], [raws[1], raws[4]]):
        assert_as_pydantic(PredictionMade, batch)
    bare = [record_of(e, i, drop=("ce_specversion", "content-type")) for i, e in enumerate(events)]
    assert_as_pydantic(PredictionMade, bare)
    no_subject = [record_of(e, i, drop=("ce_subject",)) for i, e in enumerate(events)]
    assert_as_pydantic(PredictionMade, no_subject)
    odd = [record_of(events[1], 20, headers={"ce_causationid": None}), record_of(events[2], 21)]
    assert len(assert_as_pydantic(PredictionMade, odd).rejected) == 1


def in_place(raw: Record, name: str, value: bytes) -> Record:
    """The record with one header's value replaced where it stands (the layout unchanged)."""
    raw.headers = [(k, value if k == name else v) for k, v in raw.headers]
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
    """Same headers in the same order everywhere, so taken as columns (a header with the same
    value in every record is taken once): the one record that differs still counts."""
    raws = [record_of(prediction(f"p{i}"), i, model_name=DROP) for i in range(5)]
    in_place(raws[2], name, value)
    assert_as_pydantic(PredictionMade, raws)
    labels = [record_of(label(f"p{i}"), i, model_name=DROP) for i in range(5)]
    in_place(labels[3], name, value)
    assert_as_pydantic(LabelObserved, labels)


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

    def repeated(raw: Record) -> Record:
        raw.headers = [header, *raw.headers] if where == "first" else [*raw.headers, header]
        return raw

    every = [repeated(record_of(prediction(f"p{i}"), i, model_name=DROP)) for i in range(3)]
    assert_as_pydantic(PredictionMade, every)
    assert_as_pydantic(PredictionMade, among_good(repeated(record_of(prediction("odd")))))


@pytest.mark.parametrize(
    "replace",
    [
        {"0.25": str(10**30)},  # beyond 64 bits: orjson makes it a float
        {"0.25": str(2**64 - 1)},
        {"0.25": str(-(2**63))},
        {'"version":1': '"version":' + str(2**64 - 1)},
        {'"label":1': '"label":' + str(2**63)},
        {'"x":0.25': '"x":0.25,"x":true'},  # a repeated key: the last one counts
        {'"x":0.25': '"x":true,"x":0.25'},
        {'"x":0.25': '"x":0.25,"x":1'},
        {'"label":1': '"label":1,"label":"1"'},
    ],
)
def test_numbers_and_repeated_keys_are_decoded_as_pydantic_does(replace):
    value = encode(prediction("odd")).value
    for old, new in replace.items():
        assert old.encode() in value
        value = value.replace(old.encode(), new.encode())
    assert_as_pydantic(PredictionMade, among_good(record_of(prediction("odd"), value=value)))
    every = [record_of(prediction(f"p{i}"), i, value=value) for i in range(3)]
    assert_as_pydantic(PredictionMade, every)


def test_a_value_holding_two_json_documents_cannot_shift_the_batch():
    good = [record_of(prediction(f"p{i}"), i) for i in range(3)]
    two = encode(prediction("two")).value
    raws = [*good, record_of(prediction("x"), 3, value=two + b"," + two)]
    got = decode_batch(PredictionMade, raws)
    assert got.accepted == good and got.columns.prediction_id == ["p0", "p1", "p2"]
    assert "JSON" in got.rejected[0][1]


def test_datetimes_in_the_data_keep_their_value_and_offset():
    from modelbus_contracts import DriftDetected

    golden = json.loads((GOLDEN / "drift.detected.v1.json").read_text())
    event = DriftDetected.model_validate(golden)
    for text in ("2026-03-01T12:00:00+02:00", "2026-03-01T12:00:00.5Z", "2026-03-01T12:00:00"):
        raw = record_of(event, detected_at=text)
        got = assert_as_pydantic(DriftDetected, [raw, raw])
        assert got.columns.detected_at[0] == datetime.fromisoformat(text) or text.endswith("00")
    assert decode_batch(DriftDetected, [record_of(event)]).columns.detected_at == [
        event.detected_at.astimezone(UTC)
    ]


def test_model_trained_nested_models_come_back_as_models():
    event = ModelTrained.model_validate_json((GOLDEN / "model.trained.v1.json").read_text())
    got = decode_batch(ModelTrained, [record_of(event)])
    assert (
        got.columns.lineage == [event.lineage]
        and type(got.columns.lineage[0]).__name__ == "Lineage"
    )
    assert got.columns.reference == [event.reference]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.one_of(st.text(max_size=8), st.sampled_from(["churn", "churn\n", "a" * 200, "a" * 201])))
def test_is_model_name_agrees_with_the_contract(name):
    try:
        LabelObserved(model_name=name, prediction_id="p", label=0)
        valid = True
    except ValidationError:
        valid = False
    assert is_model_name(name) == valid
