"""The batch encoder against pydantic: for every event, columns become records that decode to
exactly the events pydantic builds from the same values; what pydantic coerces is coerced, what
it rejects raises its reason; ids, times and headers are what ``encode`` writes."""

from __future__ import annotations

import json
import math
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from modelbus_contracts import (
    ALL_EVENTS,
    ContractError,
    Event,
    LabelObserved,
    PredictionMade,
    decode,
    encode,
)
from modelbus_contracts.cloudevents import summarise
from modelbus_contracts.codec import data_fields
from modelbus_contracts.records import DictRows, encode_batch, random_hex, random_uuid

GOLDEN = Path(__file__).parent / "golden"
ENVELOPE = ("event_id", "occurred_at", "producer", "correlation_id", "causation_id")


def golden_event(event_cls: type[Event]) -> Event:
    return event_cls.model_validate_json((GOLDEN / f"{event_cls.event_type}.json").read_text())


def decoded(records) -> list[Event]:
    return [decode(headers, value) for _, value, headers in records]


def envelope_of(event: Event) -> dict[str, Any]:
    return {
        "event_ids": [str(event.event_id)],
        "correlation_id": str(event.correlation_id),
        "causation_id": None if event.causation_id is None else str(event.causation_id),
        "occurred_at": event.occurred_at,
    }


def expected_or_reason(event_cls: type[Event], event: Event, data: dict[str, Any]) -> Any:
    """What pydantic makes of ``data`` in ``event``'s envelope: the event, or the reason."""
    try:
        return event_cls.model_validate(
            {**data, **{name: getattr(event, name) for name in ENVELOPE}}
        )
    except ValidationError as exc:
        return summarise(exc)


def assert_encodes_as_pydantic(event_cls: type[Event], event: Event, data: dict, shared=()):
    """``data`` as one row (the fields in ``shared`` shared, the rest per row)."""
    expected = expected_or_reason(event_cls, event, data)
    shared_values = {k: v for k, v in data.items() if k in shared}
    rows = {k: [v] for k, v in data.items() if k not in shared}
    try:
        records = encode_batch(
            event_cls,
            producer=event.producer,
            shared=shared_values,
            rows=rows,
            **envelope_of(event),
        )
    except ContractError as exc:
        assert isinstance(expected, str), (data, str(exc))
        assert str(exc) == f"invalid event: {expected.removeprefix('invalid event: ')}"
        return
    assert not isinstance(expected, str), (data, expected)
    assert records[0][0] == expected.model_name.encode()
    assert received(*records[0][1:]) == received(encode(expected).value, encode(expected).headers)


def received(value: bytes, headers: Any) -> Any:
    """What a consumer makes of a record: the event, or the reason it is refused (pydantic's
    own encoding of 10**30 as an int, say, does not decode)."""
    try:
        return decode(headers, value)
    except ContractError as exc:
        return str(exc)


@pytest.mark.parametrize("event_cls", ALL_EVENTS, ids=lambda c: c.event_type)
def test_every_golden_example_encodes_to_itself(event_cls):
    event = golden_event(event_cls)
    data = {name: getattr(event, name) for name in data_fields(event_cls)}
    plain = json.loads(encode(event).value)
    names = list(data)
    for shared in ((), names, names[: len(names) // 2]):
        assert_encodes_as_pydantic(event_cls, event, data, shared)  # models and all
        assert_encodes_as_pydantic(event_cls, event, plain, shared)  # as JSON gives them
    records = encode_batch(
        event_cls, producer=event.producer, shared={}, rows={k: [v] for k, v in plain.items()}
    )
    static = ("ce_specversion", "ce_type", "ce_subject", "content-type", "ce_source")
    written = {k: v.encode() for k, v in encode(event).headers.items() if k in static}
    assert {k: v for k, v in records[0][2] if k in static} == written


ODD = [
    None,
    True,
    0,
    1,
    -1,
    2.0,
    1.5,
    -0.0,
    math.nan,
    math.inf,
    -math.inf,
    2**63,
    2**64,
    10**30,
    "",
    "x",
    "1.5",
    "churn\n",
    "\x00",
    "\u0661",
    "x" * 201,
    "shadow",
    "2026-03-01T12:00:00.1234567Z",
    datetime(2026, 3, 1, 12, tzinfo=timezone(timedelta(hours=2))),
    datetime(2026, 3, 1, 12),
    uuid.UUID(int=7),
    str(uuid.UUID(int=7)).upper(),
    [],
    [1.5],
    ["a"],
    {},
    {"a": 1},
    {"a": "1.5"},
    {"a": math.nan},
    {"a": True},
    {"a": [1]},
    np.float64(0.5),
    np.int64(3),
]


@pytest.mark.parametrize("event_cls", ALL_EVENTS, ids=lambda c: c.event_type)
def test_every_odd_value_is_encoded_as_pydantic_builds_it(event_cls):
    event = golden_event(event_cls)
    plain = json.loads(encode(event).value)
    for name in plain:
        for value in ODD:
            assert_encodes_as_pydantic(event_cls, event, {**plain, name: value})
            assert_encodes_as_pydantic(event_cls, event, {**plain, name: value}, shared=(name,))
        without = {k: v for k, v in plain.items() if k != name}
        assert_encodes_as_pydantic(event_cls, event, without)
    assert_encodes_as_pydantic(event_cls, event, {**plain, "surprise": 1})


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    features=st.dictionaries(
        st.text(max_size=5), st.one_of(st.floats(), st.integers(), st.booleans()), max_size=5
    ),
    score=st.one_of(st.floats(), st.integers(), st.text(max_size=4)),
    label=st.one_of(st.integers(), st.booleans(), st.floats()),
    latency_ms=st.floats(),
    prediction_id=st.text(max_size=6),
)
def test_random_predictions_are_encoded_as_pydantic_builds_them(
    features, score, label, latency_ms, prediction_id
):
    event = golden_event(PredictionMade)
    plain = json.loads(encode(event).value) | {
        "features": features,
        "score": score,
        "label": label,
        "latency_ms": latency_ms,
        "prediction_id": prediction_id,
    }
    if any("\ud800" <= c <= "\udfff" for c in prediction_id + "".join(features)):
        return  # a lone surrogate: not even pydantic's own encoding can be decoded
    assert_encodes_as_pydantic(PredictionMade, event, plain)


# -- the scorer's shape: shared values and arrays ---------------------------------------------

FEATURES = ("age", "tenure", "spend")


def scored(n: int, **overrides: Any) -> dict[str, Any]:
    rng = np.random.default_rng(n)
    rows = {
        "prediction_id": random_ids(n),
        "features": DictRows(FEATURES, rng.normal(size=(n, len(FEATURES)))),
        "score": rng.uniform(size=n),
        "label": rng.integers(0, 2, size=n),
    }
    return rows | overrides


def random_ids(n: int) -> list[str]:
    return [random_hex() for _ in range(n)]


SHARED = {
    "model_name": "churn",
    "version": 4,
    "request_id": "req-1",
    "served_by": "champion",
    "source": "http",
    "latency_ms": 0.37,
}


def test_arrays_and_shared_values_become_the_events_pydantic_builds():
    rows = scored(5)
    when = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    records = encode_batch(
        PredictionMade, producer="scorer", shared=SHARED, rows=rows, occurred_at=when
    )
    events = decoded(records)
    X = rows["features"].values
    for i, event in enumerate(events):
        assert event == PredictionMade(
            event_id=event.event_id,
            correlation_id=event.event_id,  # an event without a cause starts its own chain
            occurred_at=when,
            producer="scorer",
            prediction_id=rows["prediction_id"][i],
            features=dict(zip(FEATURES, X[i].tolist(), strict=True)),
            score=float(rows["score"][i]),
            label=int(rows["label"][i]),
            **SHARED,
        )
    assert len({e.event_id for e in events}) == 5
    assert {k for k, _ in records[0][2]} == {
        "ce_specversion",
        "ce_type",
        "ce_subject",
        "content-type",
        "ce_source",
        "ce_id",
        "ce_time",
        "ce_correlationid",
    }


def test_a_caused_batch_keeps_the_ids_it_is_given():
    cause_id, correlation = uuid.uuid4(), uuid.uuid4()
    ids = [str(uuid.uuid5(cause_id, f"p{i}")) for i in range(2)]
    records = encode_batch(
        PredictionMade,
        producer="scorer",
        shared=SHARED,
        rows=scored(2),
        event_ids=ids,
        correlation_id=str(correlation),
        causation_id=str(cause_id),
    )
    events = decoded(records)
    assert [str(e.event_id) for e in events] == ids
    assert {e.correlation_id for e in events} == {correlation}
    assert {e.causation_id for e in events} == {cause_id}
    upper = encode_batch(
        LabelObserved,
        producer="up",
        shared={"model_name": "churn", "label": 1},
        rows={"prediction_id": ["a"]},
        event_ids=[ids[0].upper()],
    )
    assert str(decoded(upper)[0].event_id) == ids[0]


def test_columns_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match=r"shorter|longer"):
        encode_batch(PredictionMade, producer="s", shared=SHARED, rows=scored(2) | {"score": [0.5]})
    with pytest.raises(ValueError, match="both"):
        encode_batch(PredictionMade, producer="s", shared=SHARED, rows=scored(1) | {"version": [1]})
    with pytest.raises(ValueError, match="event ids"):
        encode_batch(PredictionMade, producer="s", shared=SHARED, rows=scored(2), event_ids=["a"])
    with pytest.raises(ContractError, match="producer"):
        encode_batch(PredictionMade, producer="", shared=SHARED, rows=scored(1))
    with pytest.raises(ContractError, match="UUID"):
        encode_batch(PredictionMade, producer="s", shared=SHARED, rows=scored(1), causation_id="x")
    with pytest.raises(ValueError):
        encode_batch(
            PredictionMade,
            producer="s",
            shared=SHARED,
            rows=scored(1) | {"features": DictRows(("a",), [[1.0, 2.0]])},
        )


def test_a_non_finite_score_is_refused_with_pydantics_reason():
    rows = scored(3, score=np.array([0.5, np.nan, 0.2]))
    with pytest.raises(ContractError, match="score"):
        encode_batch(PredictionMade, producer="s", shared=SHARED, rows=rows)


def test_ids_and_times_are_well_formed():
    ids = {random_uuid() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(uuid.UUID(u).version == 4 and str(uuid.UUID(u)) == u for u in list(ids)[:50])
    hexes = [random_hex() for _ in range(500)]
    assert len(set(hexes)) == 500 and all(re.fullmatch(r"[0-9a-f]{32}", h) for h in hexes)
    before = datetime.now(UTC)
    [event] = decoded(
        encode_batch(
            LabelObserved,
            producer="u",
            shared={},
            rows={"model_name": ["m"], "prediction_id": ["p"], "label": [0]},
        )
    )
    assert before - timedelta(milliseconds=1) <= event.occurred_at <= datetime.now(UTC)
    naive = datetime(2026, 3, 1, 12)
    [event] = decoded(
        encode_batch(
            LabelObserved,
            producer="u",
            shared={},
            rows={"model_name": ["m"], "prediction_id": ["p"], "label": [0]},
            occurred_at=naive,
        )
    )
    assert event.occurred_at == naive.replace(tzinfo=UTC)
