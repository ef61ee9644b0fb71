"""The fast codecs against the pydantic reference, for every event: the golden example with one
thing changed at a time (each value anywhere in its data replaced by odd values of every JSON
type, numbers spelled in odd ways, fields dropped or added, each header missing, changed,
repeated or renamed), then random data (hypothesis). The batch decoder must accept what
pydantic accepts, with its values and types, and reject the rest with pydantic's reasons, both
when the odd record is among good ones and when every record of the batch has the oddity (the
batch path sees uniform columns then). Hypothesis runs derandomized: the same examples on every
run, so a test run's outcome depends on the code alone."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelbus_contracts import ALL_EVENTS, EVENTS_BY_TYPE, Event, encode
from modelbus_contracts.testing import Record, assert_as_pydantic

GOLDEN = Path(__file__).parent / "golden"
U = "9c5b94b1-35ad-49bb-b118-8e8fc24abf80"

VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2,
    1.0,
    0.5,
    1.5,
    -0.0,
    -2.5,
    5e-324,
    1e300,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    -(2**63),
    -(2**63) - 1,
    10**30,
    "",
    " ",
    "x",
    "1",
    "0.5",
    "true",
    "null",
    "NaN",
    "inf",
    "a\nb",
    "x\n",
    "\x00",
    "\u0661",  # ARABIC-INDIC DIGIT ONE
    "\uff11",  # FULLWIDTH DIGIT ONE
    "ünï",
    "\ud800",  # a lone surrogate (escaped in JSON)
    "x" * 200,
    "x" * 201,
    "é" * 201,
    "churn",
    "churn\n",
    "no spaces",
    "champion",
    "CHAMPION",
    "shadow",
    "2026-03-01T12:00:00Z",
    "2026-03-01T12:00:00.123456Z",
    "2026-03-01T12:00:00.1234567Z",
    "2026-03-01T12:00:00.9999999Z",
    "2026-03-01t12:00:00z",
    "2026-03-01 12:00:00",
    "2026-03-01T12:00:00",
    "2026-03-01T12:00:00+02:00",
    "2026-03-01T12:00:00-00:00",
    "2026-03-01T12:00Z",
    "2026-03-01",
    "1700000000",
    "2026-02-30T00:00:00Z",
    "2026-03-01T24:00:00Z",
    "2026-03-01T12:00:0\u0661Z",
    U,
    U.upper(),
    U.replace("-", ""),
    f"urn:uuid:{U}",
    f"{{{U}}}",
    U + "\n",
    "0" * 64,
    "A" * 64,
    "0" * 63,
    [],
    [1],
    ["a"],
    [None],
    [1.5],
    ["champion"],
    [{"a": 1}],
    {},
    {"a": 1},
    {"a": 1.5},
    {"a": True},
    {"a": "1.5"},
    {"a": None},
    {"a": [1]},
    {"a": {"b": 1}},
    {"a": 2**64},
    {"a": 10**30},
    {"a": [[[[[1]]]]]},
]
# deeper in the data: one value of each kind, and the odd numbers only where a number was
NESTED_VALUES: list[Any] = [
    None,
    True,
    1,
    1.5,
    2**64,
    "",
    "x",
    "a\nb",
    "0" * 64,
    [],
    [1],
    {},
    {"a": 1},
]
# and where a string was: the forms of ids, hashes and odd characters
NESTED_STRINGS = [
    U,
    U.upper(),
    U.replace("-", ""),
    f"urn:uuid:{U}",
    f"{{{U}}}",
    U + "\n",
    U[:-1] + "\u0661",
    "A" * 64,
    "0" * 63,
    "0" * 64 + "\n",
    "x\n",
    "\x00",
]
# numbers as JSON text, some of them not JSON at all
NUMBERS = [
    "1e400",
    "-1e400",
    "NaN",
    "Infinity",
    "-Infinity",
    "1E2",
    "1e-400",
    "-0",
    "00",
    "1.",
    ".5",
    "+1",
    "0x10",
    "123456789012345678901234567890",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "1.0000000000000000000001",
    "2.5e-324",
]
NUMBER = "\u00a7number\u00a7"


def golden_event(event_cls: type[Event]) -> Event:
    return event_cls.model_validate_json((GOLDEN / f"{event_cls.event_type}.json").read_text())


def records(event: Event, value: bytes | None = None, headers: Any = None) -> Record:
    encoded = encode(event)
    hdrs = [(k, v.encode()) for k, v in encoded.headers.items()] if headers is None else headers
    return Record(hdrs, encoded.value if value is None else value, topic=encoded.topic)


def shape(value: Any) -> Any:
    return tuple(sorted(value)) if isinstance(value, dict) else type(value)


def paths(data: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in the data: each member of every object (of a map whose values all have
    the same shape, the first one), the first item of every list."""
    if isinstance(data, dict):
        items = list(data.items())
        if at and len(items) > 1 and len({shape(v) for _, v in items}) == 1:
            items = items[:1]
        for key, value in items:
            yield (*at, key)
            yield from paths(value, (*at, key))
    elif isinstance(data, list) and data:
        yield (*at, 0)
        yield from paths(data[0], (*at, 0))


def changed(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    out = copy.deepcopy(data)
    parent = out
    for step in path[:-1]:
        parent = parent[step]
    if value is _DROP:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return out


_DROP = object()


def dumps(data: Any, ascii_only: bool = True) -> bytes:
    text = json.dumps(data, ensure_ascii=ascii_only)
    return text.encode("utf-8", "surrogatepass")


def data_mutations(event: Event) -> Iterator[tuple[str, bytes]]:
    """(what changed, the JSON value) for every change of the golden data."""
    data = json.loads(encode(event).value)
    for path in paths(data):
        original = changed(data, path, _DROP)
        yield f"drop {path}", dumps(original)
        parent = path[:-1]
        container = data
        for step in parent:
            container = container[step]
        if isinstance(container, dict):
            yield f"extra beside {path}", dumps(changed(data, (*parent, "surprise"), 1))
        nested = len(path) > 1
        was = container[path[-1]]
        odd = VALUES if not nested else NESTED_VALUES + (NESTED_STRINGS if type(was) is str else [])
        for value in odd:
            mutated = changed(data, path, value)
            yield f"{path} = {value!r}", dumps(mutated)
            if isinstance(value, str) and value.isascii() is False and "\ud800" not in value:
                yield f"{path} = {value!r} (raw UTF-8)", dumps(mutated, ascii_only=False)
        if nested and type(was) not in (int, float):
            continue
        numbered = dumps(changed(data, path, NUMBER))
        for number in NUMBERS:
            yield f"{path} = {number}", numbered.replace(f'"{NUMBER}"'.encode(), number.encode())
    for name in ("event_id", "causation_id", "producer", "occurred_at"):
        yield f"envelope {name} in data", dumps({**data, name: U})
    yield "model_name null", dumps({**data, "model_name": None})
    yield "not an object", b"[1, 2]"
    yield "not JSON", b"not json"
    yield "empty", b""
    yield "two objects", dumps(data) + b"," + dumps(data)
    yield "trailing space", dumps(data) + b" "
    yield "byte order mark", b"\xef\xbb\xbf" + dumps(data)
    yield (
        "invalid UTF-8 in a string",
        dumps({**data, "model_name": "\x01"}).replace(b"\\u0001", b"\xff"),
    )
    yield "no model_name (subject)", dumps({k: v for k, v in data.items() if k != "model_name"})


def header_mutations(event: Event) -> Iterator[tuple[str, list[tuple[str, Any]], tuple[str, ...]]]:
    """(what changed, the headers, the columns pydantic makes up for it)."""
    base = [(k, v.encode()) for k, v in encode(event).headers.items()]
    if not any(k == "ce_causationid" for k, _ in base):
        base.append(("ce_causationid", str(uuid.uuid4()).encode()))
    made_up = {"ce_id": ("event_id",), "ce_correlationid": ("correlation_id",)}
    made_up["ce_time"] = ("occurred_at",)
    odd_values = [
        b"",
        b" ",
        b"\xff",
        None,
        "text",
        b"x",
        U.upper().encode(),
        U.replace("-", "").encode(),
        U.encode() + b"\n",
        U.encode() + b" ",
        U.encode() + b"\n" + U.encode(),
        f"urn:uuid:{U}".encode(),
        b"2026-03-01T12:00:00Z",
        b"2026-03-01T12:00:00.123Z",
        b"2026-03-01T12:00:00.5+00:00",
        b"2026-03-01T12:00:00+02:00",
        b"2026-03-01T12:00:00",
        b"2026-03-01 12:00:00Z",
        b"2026-02-29T12:00:00Z",
        b"2028-02-29T12:00:00Z",
        b"0000-03-01T12:00:00Z",
        b"2026-03-01T24:00:00Z",
        b"2026-03-01T12:00:00.1234567Z",
        b"2026-03-01T12:00:00Z\n",
        "2026-03-01T12:00:0\u0661Z".encode(),
        b"1.0",
        b"0.3",
        b"application/json",
        b"application/cloudevents+json",
        b"text/plain",
        event.event_type.encode(),
        b"label.observed.v1",
        b"other",
        b"bad name",
        "ünï".encode(),
    ]
    for i, (name, _) in enumerate(base):
        without = base[:i] + base[i + 1 :]
        yield f"no {name}", without, made_up.get(name, ())
        for value in odd_values:
            changed_headers = [*without[:i], (name, value), *without[i:]]
            yield f"{name} = {value!r}", changed_headers, made_up.get(name, ())
        yield f"{name} renamed", [*without, (name.upper(), base[i][1])], ()
        yield f"{name} repeated first", [(name, b"x"), *base], ()
        yield f"{name} repeated last", [*base, (name, b"x")], ()
        yield f"{name} repeated, same", [*base, base[i]], ()
    yield "reversed", list(reversed(base)), ()
    yield "a tuple", tuple(base), ()  # type: ignore[misc]
    yield "extra header", [*base, ("x-trace", b"1")], ()
    yield "extra ce_ header", [*base, ("ce_dataschema", b"x")], ()


def check(event_cls: type[Event], odd: Record, good: Record, why: str, made_up=()) -> None:
    for batch in ([good, odd], [odd, odd]):
        raws = [Record(r.headers, r.value, offset, r.topic) for offset, r in enumerate(batch)]
        assert_as_pydantic(event_cls, raws, made_up=made_up if odd in batch else (), why=why)


@pytest.mark.parametrize("event_cls", ALL_EVENTS, ids=lambda c: c.event_type)
def test_every_change_to_the_data_is_decoded_as_pydantic_does(event_cls):
    event = golden_event(event_cls)
    good = records(event)
    for why, value in data_mutations(event):
        check(event_cls, records(event, value=value), good, why)


# the envelope is checked alike for every event: a few kinds of data are enough
HEADER_EVENTS = [EVENTS_BY_TYPE[t] for t in ("prediction.made.v1", "label.observed.v1")] + [
    EVENTS_BY_TYPE[t] for t in ("model.trained.v1", "drift.detected.v1")
]


@pytest.mark.parametrize("event_cls", HEADER_EVENTS, ids=lambda c: c.event_type)
def test_every_change_to_the_headers_is_decoded_as_pydantic_does(event_cls):
    event = golden_event(event_cls)
    good = records(event)
    for why, headers, made_up in header_mutations(event):
        check(event_cls, records(event, headers=headers), good, why, made_up)
        data = json.loads(good.value)
        data.pop("model_name")  # the subject header supplies it
        nameless = records(event, value=json.dumps(data).encode(), headers=headers)
        check(event_cls, nameless, good, f"{why}, model_name from the subject", made_up)


# -- random data -------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def odd_data(draw: st.DrawFn, event_cls: type[Event]) -> bytes:
    """The golden data with some values replaced at random (anywhere, any JSON)."""
    data = json.loads(encode(golden_event(event_cls)).value)
    for path in draw(st.lists(st.sampled_from(list(paths(data))), max_size=3, unique=True)):
        try:
            data = changed(data, path, draw(st.one_of(json_values, st.sampled_from(VALUES))))
        except (KeyError, IndexError, TypeError):  # the path went away with an earlier change
            continue
    return dumps(data)


@pytest.mark.parametrize("event_cls", ALL_EVENTS, ids=lambda c: c.event_type)
@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_data_is_decoded_as_pydantic_does(event_cls, data):
    event = golden_event(event_cls)
    good = records(event)
    values = data.draw(st.lists(odd_data(event_cls), min_size=1, max_size=4))
    raws = [Record(good.headers, v, i, good.topic) for i, v in enumerate([good.value, *values])]
    assert_as_pydantic(event_cls, raws)
    assert_as_pydantic(event_cls, raws[1:])


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    features=st.dictionaries(
        st.text(max_size=6), st.one_of(st.floats(allow_nan=False), st.integers()), max_size=6
    ),
    score=st.one_of(st.floats(allow_nan=False), st.integers(), json_values),
    label=st.one_of(st.integers(), st.booleans(), st.floats(allow_nan=False)),
    served_by=st.one_of(st.sampled_from(["champion", "fallback", "shadow", "canary"]), st.text()),
    model_name=st.one_of(
        st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,5}", fullmatch=True), st.text()
    ),
)
def test_random_predictions_are_decoded_as_pydantic_does(
    features, score, label, served_by, model_name
):
    event_cls = EVENTS_BY_TYPE["prediction.made.v1"]
    event = golden_event(event_cls)
    data = json.loads(encode(event).value) | {
        "features": features,
        "score": score,
        "label": label,
        "served_by": served_by,
        "model_name": model_name,
    }
    good = records(event)
    odd = records(event, value=dumps(data))
    raws = [Record(r.headers, r.value, i, r.topic) for i, r in enumerate([good, odd, odd])]
    assert_as_pydantic(event_cls, raws)
    assert_as_pydantic(event_cls, raws[1:])
