"""Columnar decoding of the high-volume telemetry (``prediction.made.v1``, ``label.observed.v1``)
straight from the Kafka records into column lists, without a pydantic model per event.

The fast path accepts only records whose shape is unambiguous: binary-mode CloudEvents with the
headers ``encode`` writes (lowercase names, UTF-8), canonical lowercase UUIDs, an RFC 3339 UTC
time, a JSON object with only the event's fields and exact JSON types (``int`` for ints,
``int``/``float`` for floats, ``str`` for strings), finite numbers within the contract's bounds.
The checks run per column (type sets, byte slices over all ids and times at once, numpy for
ranges and finiteness), and the JSON of the whole batch is parsed at once. Every record the
fast path does not accept goes through ``modelbus_contracts.decode`` (pydantic), which either
accepts it (coercions such as ``"1.5"`` -> 1.5 included) or rejects it with the contract's
reason: the result is the same set of accepted events, with the same values, and the same
dead-letter reasons as decoding every record with pydantic.
"""

from __future__ import annotations

import gc
import re
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import date
from itertools import chain
from operator import itemgetter
from typing import Any, Self

import numpy as np
import orjson

from modelbus_contracts import ContractError, LabelObserved, PredictionMade, decode

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_UUIDS = re.compile(rf"(?:{_UUID}\n)*")
_TIME = re.compile(  # [0-9], not \d: in a str pattern \d matches the digits of any script
    r"([0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01]))"
    r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?(?:Z|\+00:00)"
)
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_REQUIRED_HEADERS = ("ce_type", "ce_id", "ce_time", "ce_source", "ce_correlationid")
_KNOWN_HEADERS = frozenset(
    {*_REQUIRED_HEADERS, "ce_specversion", "ce_subject", "content-type", "ce_causationid"}
)
_NUMBER = frozenset({int, float})
_SERVED_BY = frozenset({"champion", "fallback", "shadow", "canary"})
_SOURCES = frozenset({"http", "stream", "batch"})
_PREDICTION_FIELDS = frozenset(
    {
        "model_name",
        "prediction_id",
        "request_id",
        "version",
        "features",
        "score",
        "label",
        "served_by",
        "shadow_of",
        "source",
        "latency_ms",
    }
)
_PREDICTION_REQUIRED = ("prediction_id", "version", "features", "score", "label", "latency_ms")
_LABEL_FIELDS = frozenset({"model_name", "prediction_id", "label"})


class _Columns:
    """A batch of events held as one list per field (a dataclass of lists, ``model_names``
    first among them): built from events, split by model with the rows in order."""

    model_names: list[str]

    def __len__(self) -> int:
        return len(self.model_names)

    def append_event(self, event: Any) -> None:
        raise NotImplementedError

    @classmethod
    def of(cls, events: Iterable[Any]) -> Self:
        batch = cls()
        for event in events:
            batch.append_event(event)
        return batch

    def by_model(self) -> dict[str, Self]:
        """One batch per model, in the order the models first appear."""
        if len(set(self.model_names)) <= 1:
            return {self.model_names[0]: self} if self.model_names else {}
        rows: dict[str, list[int]] = {}
        for i, name in enumerate(self.model_names):
            rows.setdefault(name, []).append(i)
        columns = [getattr(self, f.name) for f in fields(self)]  # type: ignore[arg-type]
        return {
            name: type(self)(*([column[i] for i in picked] for column in columns))
            for name, picked in rows.items()
        }


@dataclass
class PredictionBatch(_Columns):
    """The monitor's view of a batch of PredictionMade, one list per field (ids as strings)."""

    model_names: list[str] = field(default_factory=list)
    prediction_ids: list[str] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    served_by: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    features: list[dict[str, float]] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)
    correlation_ids: list[str] = field(default_factory=list)

    def append_event(self, event: PredictionMade) -> None:
        self.model_names.append(event.model_name)
        self.prediction_ids.append(event.prediction_id)
        self.versions.append(event.version)
        self.served_by.append(event.served_by)
        self.labels.append(event.label)
        self.features.append(event.features)
        self.event_ids.append(str(event.event_id))
        self.correlation_ids.append(str(event.correlation_id))


@dataclass
class LabelBatch(_Columns):
    """The monitor's view of a batch of LabelObserved."""

    model_names: list[str] = field(default_factory=list)
    prediction_ids: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)

    def append_event(self, event: LabelObserved) -> None:
        self.model_names.append(event.model_name)
        self.prediction_ids.append(event.prediction_id)
        self.labels.append(event.label)
        self.event_ids.append(str(event.event_id))


Rejected = list[tuple[Any, str]]


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while a batch is parsed: the thousands of dicts and
    lists it builds cannot form cycles, and every collection they would trigger traverses the
    monitor's long-lived state (join buffers, windows). Collection resumes right after."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def decode_predictions(raws: list[Any]) -> tuple[PredictionBatch, list[Any], Rejected]:
    """Kafka records of ``prediction.made.v1`` -> (batch, the accepted records in order, the
    rejected records with their reason)."""
    with _no_cyclic_gc():
        return _decode_predictions(raws)


def _decode_predictions(raws: list[Any]) -> tuple[PredictionBatch, list[Any], Rejected]:
    envelope = _batch_envelope(raws, PredictionMade.event_type)
    if envelope is not None:
        batch = _batch_predictions(*envelope)
        if batch is not None:
            return batch, list(raws), []
    return decode_predictions_by_record(raws)


def decode_predictions_by_record(
    raws: list[Any],
) -> tuple[PredictionBatch, list[Any], Rejected]:
    """The same, checking record by record (a batch with anything unusual in it)."""
    parsed = _parse(raws, PredictionMade.event_type)
    ok = parsed.ok
    datas = parsed.datas
    _check_fields(datas, ok, _PREDICTION_FIELDS, _PREDICTION_REQUIRED)
    rows = [i for i in range(len(raws)) if ok[i]]
    if rows:
        _check_predictions(datas, rows, ok)
    return _assemble(raws, parsed, PredictionBatch(), PredictionMade, _append_prediction)


def decode_labels(raws: list[Any]) -> tuple[LabelBatch, list[Any], Rejected]:
    """Kafka records of ``label.observed.v1`` -> (batch, accepted records, rejected records)."""
    with _no_cyclic_gc():
        return _decode_labels(raws)


def _decode_labels(raws: list[Any]) -> tuple[LabelBatch, list[Any], Rejected]:
    envelope = _batch_envelope(raws, LabelObserved.event_type)
    if envelope is not None:
        batch = _batch_labels(*envelope)
        if batch is not None:
            return batch, list(raws), []
    return decode_labels_by_record(raws)


def decode_labels_by_record(raws: list[Any]) -> tuple[LabelBatch, list[Any], Rejected]:
    """The same, checking record by record (a batch with anything unusual in it)."""
    parsed = _parse(raws, LabelObserved.event_type)
    ok, datas = parsed.ok, parsed.datas
    _check_fields(datas, ok, _LABEL_FIELDS, ("prediction_id", "label"))
    for i in range(len(raws)):
        if ok[i]:
            d = datas[i]
            pid, label = d["prediction_id"], d["label"]
            if type(pid) is not str or not pid or type(label) is not int or label not in (0, 1):
                ok[i] = False
    return _assemble(raws, parsed, LabelBatch(), LabelObserved, _append_label)


# -- the whole batch at once -----------------------------------------------------------------

_TIMES_BYTES = re.compile(b"(?:" + _TIME.pattern.encode() + b"\n)*")
# Between two records' values in the batch's JSON array: a line break (a raw control character
# cannot be inside a JSON string) and a null of ours (which cannot follow a comma inside an
# object). So a value cut in two or holding two documents cannot make the elements line up
# with the records (``_batch_json``).
_SEPARATOR = b",\nnull,\n"
# hs (header name -> values), the ids then the correlation ids one per line, the data
_Envelope = tuple[dict[str, list[Any]], bytes, list[dict[str, Any]]]


def _batch_envelope(raws: list[Any], event_type: str) -> _Envelope | None:
    """Headers and JSON of a whole batch checked column by column, or None when anything is
    unusual (then record by record). The data's fields are the event's to check."""
    if not raws:
        return None
    try:
        hs = _header_columns(raws) or _header_dicts(raws)
        n = len(raws)
        if not hs.keys() <= _KNOWN_HEADERS or set(hs["ce_type"]) != {event_type.encode()}:
            return None
        if not set(hs.get("ce_specversion", ())) <= {b"1.0", _ABSENT}:
            return None
        if not set(hs.get("content-type", ())) <= {b"application/json", _ABSENT}:
            return None
        uuids = b"\n".join(hs["ce_id"] + hs["ce_correlationid"]) + b"\n"
        if not _uuid_lines(uuids, 2 * n):
            return None
        causations = [c for c in hs.get("ce_causationid", ()) if c is not _ABSENT and c != b""]
        if causations and not _uuid_lines(b"\n".join(causations) + b"\n", len(causations)):
            return None
        if not _times_valid(hs["ce_time"]):
            return None
        sources = hs["ce_source"]
        if not all(sources):
            return None
        b"".join(sources).decode()
        datas = _batch_json(raws)
        if datas is None or set(map(type, datas)) != {dict}:
            return None
    except Exception:  # a missing header, bad UTF-8 or JSON: record by record
        return None
    return hs, uuids, datas


def _batch_json(raws: list[Any]) -> list[Any] | None:
    """One parse for the whole batch: the values as the elements of one JSON array with
    ``_SEPARATOR`` between them. The records' data, or None unless each value is exactly one
    element. Why that holds: each comma of a separator is outside any string (a line break
    follows it) and inside an array (a null follows it, which no object allows); the only
    array is the outer one once the odd elements are our nulls and the even ones objects
    without arrays (no field the decoders accept holds one). So the separators are at the top
    level, each value gives at least one element between two of them, and 2n - 1 elements in
    all means exactly one per value."""
    n = len(raws)
    values = [raw.value for raw in raws]
    values[0] = b"[" + values[0]  # the brackets without copying the joined batch again
    values[-1] = values[-1] + b"]"
    parsed = orjson.loads(_SEPARATOR.join(values))
    if len(parsed) != 2 * n - 1 or parsed[1::2].count(None) != n - 1:
        return None
    return parsed[::2]


def _header_columns(raws: list[Any]) -> dict[str, list[Any]] | None:
    """Header name -> the records' values, when every record has the same headers in the same
    order (what one producer writes): a transpose, no dict per record. Else None."""
    try:
        rows = [raw.headers for raw in raws]
        if len(set(map(len, rows))) != 1:
            return None
        n = len(rows)
        out: dict[str, list[Any]] = {}
        for column in zip(*rows, strict=True):
            head = column[0]
            if head == column[-1] and column.count(head) == n:  # the same (name, value) in all
                name = head[0]
                if name in out:
                    return None
                out[name] = [head[1]] * n
                continue
            names = set(map(_first, column))
            if len(names) != 1:
                return None
            name = names.pop()
            if name in out:  # a repeated header: the dicts say which one wins
                return None
            out[name] = list(map(_second, column))
        return out
    except Exception:
        return None


def _header_dicts(raws: list[Any]) -> dict[str, list[Any]]:
    """Header name -> the records' values (``_ABSENT`` where a record lacks it), via one dict
    per record."""
    hs = list(map(dict, [raw.headers for raw in raws]))
    return {name: [h.get(name, _ABSENT) for h in hs] for name in set().union(*hs)}


_ABSENT: Any = object()
_first, _second = itemgetter(0), itemgetter(1)


_CANONICAL_TIME = 27  # YYYY-MM-DDTHH:MM:SS.ffffffZ, what encode writes
_TIME_LINE = _CANONICAL_TIME + 1  # and its line break
_TIME_SEPARATORS = {4: b"-", 7: b"-", 10: b"T", 13: b":", 16: b":", 19: b".", 26: b"Z"}
_DATE_HOUR = 13  # YYYY-MM-DDTHH


def _times_valid(times: list[bytes]) -> bool:
    """RFC 3339 UTC times (``_TIME``) with real calendar days, one per line; the canonical
    fixed-width form is checked with slices of the joined lines (C-speed, no regex)."""
    n = len(times)
    lines = b"\n".join(times) + b"\n"
    if lines.count(b"\n") != n:  # a time with a line break in it
        return False
    if len(lines) != _TIME_LINE * n or lines[_CANONICAL_TIME::_TIME_LINE] != b"\n" * n:
        if not _TIMES_BYTES.fullmatch(lines):
            return False
        return _days_valid({t[:10].decode() for t in times})
    # every time is 27 characters: the separators in place, digits everywhere else
    for at, sep in _TIME_SEPARATORS.items():
        if lines[at::_TIME_LINE] != sep * n:
            return False
    if len(lines.translate(None, b"0123456789")) != (len(_TIME_SEPARATORS) + 1) * n:
        return False
    # minutes and seconds <= 59: their tens digit <= 5
    if lines[14::_TIME_LINE].translate(None, b"012345"):
        return False
    if lines[17::_TIME_LINE].translate(None, b"012345"):
        return False
    # the dates and hours: one for the whole batch as a rule, checked once
    first = lines[:_DATE_HOUR]
    if all(lines[k::_TIME_LINE] == first[k : k + 1] * n for k in range(_DATE_HOUR)):
        hours = {first}
    else:
        chars = np.frombuffer(lines, dtype=np.uint8).reshape(n, _TIME_LINE)
        prefixes = np.ascontiguousarray(chars[:, :_DATE_HOUR]).view(f"S{_DATE_HOUR}")
        hours = set(prefixes.ravel().tolist())
    if any(hour[11:] > b"23" for hour in hours):
        return False
    return _days_valid({hour[:10].decode() for hour in hours})


def _uuid_lines(lines: bytes, n: int) -> bool:
    """``n`` canonical lowercase UUIDs, one per line: fixed width, line breaks only at the
    ends, hyphens at 8, 13, 18 and 23, nothing but hex digits elsewhere (C-speed slicing
    instead of a regex per id)."""
    width = 37
    if len(lines) != width * n or lines[36::width] != b"\n" * n:
        return False
    if any(lines[at::width] != b"-" * n for at in (8, 13, 18, 23)):
        return False
    # and nothing else but hex digits: no other hyphen or line break
    return lines.translate(None, b"0123456789abcdef") == b"----\n" * n


def _uuid_column(uuids: bytes, start: int, n: int) -> list[str]:
    """Lines ``start`` to ``start + n`` of checked UUID lines, as strings."""
    return uuids[37 * start : 37 * (start + n) - 1].decode().split("\n")


def _names(datas: list[dict[str, Any]], hs: dict[str, list[Any]]) -> list[Any] | None:
    """The model names: the data's ``model_name``, else the ``ce_subject`` header."""
    try:
        subjects = hs.get("ce_subject") or [_ABSENT] * len(datas)
        return [
            d["model_name"] if "model_name" in d else (b"" if s is _ABSENT else s).decode()
            for d, s in zip(datas, subjects, strict=True)
        ]
    except Exception:  # a subject that is not UTF-8 bytes: record by record
        return None


def _names_valid(names: list[Any] | None) -> bool:
    """Valid model names, each checked once. The distinct names hold a non-string if the
    names do: they come from orjson or ``bytes.decode``, and no JSON value other than a
    string equals a string."""
    if names is None:
        return False
    try:
        distinct = set(names)
    except TypeError:  # a list or an object
        return False
    return set(map(type, distinct)) == {str} and all(map(_name_valid, distinct))


# every field of PredictionMade's data, model_name first: what ``encode`` writes
_ALL_PREDICTION_FIELDS = (
    "model_name",
    "prediction_id",
    "version",
    "label",
    "score",
    "latency_ms",
    "served_by",
    "source",
    "request_id",
    "shadow_of",
    "features",
)
_PREDICTION_GETTERS = tuple(map(itemgetter, _ALL_PREDICTION_FIELDS))


def _batch_predictions(
    hs: dict[str, list[Any]], uuids: bytes, datas: list[dict[str, Any]]
) -> PredictionBatch | None:
    columns = _complete_predictions(datas)
    if columns is None:
        if not set().union(*datas) <= _PREDICTION_FIELDS:
            return None
        try:
            columns = {
                "model_name": _names(datas, hs),
                "prediction_id": [d["prediction_id"] for d in datas],
                "version": [d["version"] for d in datas],
                "label": [d["label"] for d in datas],
                "score": [d["score"] for d in datas],
                "latency_ms": [d["latency_ms"] for d in datas],
                "served_by": [d.get("served_by", "champion") for d in datas],
                "source": [d.get("source", "http") for d in datas],
                "request_id": [d.get("request_id") for d in datas],
                "shadow_of": [d.get("shadow_of") for d in datas],
                "features": [d["features"] for d in datas],
            }
        except KeyError:
            return None
    names = columns["model_name"]
    features = columns["features"]
    if not _names_valid(names) or not _columns_valid(columns, features):
        return None
    n = len(datas)
    ids = _uuid_column(uuids, 0, 2 * n)
    return PredictionBatch(
        model_names=names,
        prediction_ids=columns["prediction_id"],
        versions=columns["version"],
        served_by=columns["served_by"],
        labels=columns["label"],
        features=features,
        event_ids=ids[:n],
        correlation_ids=ids[n:],
    )


def _complete_predictions(datas: list[dict[str, Any]]) -> dict[str, list[Any]] | None:
    """The columns in one pass when every record has every field and nothing else (what
    ``encode`` writes): as many keys as fields and all of them found means these keys. Else
    None."""
    if set(map(len, datas)) != {len(_ALL_PREDICTION_FIELDS)}:
        return None
    try:
        values = [list(map(get, datas)) for get in _PREDICTION_GETTERS]
    except KeyError:
        return None
    return dict(zip(_ALL_PREDICTION_FIELDS, values, strict=True))


_LABEL_GETTERS = tuple(map(itemgetter, ("model_name", "prediction_id", "label")))


def _batch_labels(
    hs: dict[str, list[Any]], uuids: bytes, datas: list[dict[str, Any]]
) -> LabelBatch | None:
    columns: Any = None
    if set(map(len, datas)) == {len(_LABEL_FIELDS)}:  # every field (the three keys then)
        try:
            columns = [list(map(get, datas)) for get in _LABEL_GETTERS]
        except KeyError:
            pass
    if columns is not None:
        names, pids, labels = columns
    else:
        if not set().union(*datas) <= _LABEL_FIELDS:
            return None
        try:
            names = _names(datas, hs)
            pids = [d["prediction_id"] for d in datas]
            labels = [d["label"] for d in datas]
        except KeyError:
            return None
    if not _names_valid(names):
        return None
    if set(map(type, pids)) != {str} or not all(pids):
        return None
    if set(map(type, labels)) != {int} or not set(labels) <= {0, 1}:
        return None
    ids = _uuid_column(uuids, 0, len(datas))
    return LabelBatch(model_names=names, prediction_ids=pids, labels=labels, event_ids=ids)


# -- record by record ------------------------------------------------------------------------


@dataclass
class _Parsed:
    ok: list[bool]
    datas: list[Any]
    event_ids: list[str]
    correlation_ids: list[str]
    model_names: list[str]


def _parse(raws: list[Any], event_type: str) -> _Parsed:
    """Headers and JSON of every record; ``ok[i]`` False sends record i to the pydantic path."""
    n = len(raws)
    ok = [True] * n
    datas: list[Any] = [None] * n
    ids = [""] * n
    correlations = [""] * n
    names = [""] * n
    times: list[str] = []
    causations: list[str] = []
    expected = event_type.encode()
    for i, raw in enumerate(raws):
        try:
            h = dict(raw.headers)
            if (
                h.get("ce_type") != expected
                or not h.keys() <= _KNOWN_HEADERS
                or h.get("ce_specversion", b"1.0") != b"1.0"
                or h.get("content-type", b"application/json") != b"application/json"
            ):
                raise ValueError
            ids[i] = h["ce_id"].decode()
            correlations[i] = h["ce_correlationid"].decode()
            if not h["ce_source"]:
                raise ValueError
            h["ce_source"].decode()
            times.append(h["ce_time"].decode())
            causation = h.get("ce_causationid", b"")
            if causation != b"":  # absent or empty: no causation; anything else must be a UUID
                causations.append(causation.decode())
            data = orjson.loads(raw.value)
            if type(data) is not dict:
                raise ValueError
            name = data["model_name"] if "model_name" in data else _subject(h)
            if type(name) is not str or not name:
                raise ValueError
            names[i] = name
            datas[i] = data
        except Exception:  # anything unusual: the pydantic path decides, with its reason
            ok[i] = False
    parsed = _Parsed(ok, datas, ids, correlations, names)
    if not _batch_envelope_valid(parsed, times, causations):
        _per_record_envelope(raws, parsed)
    return parsed


def _subject(headers: dict[str, bytes]) -> str:
    return headers.get("ce_subject", b"").decode()


def _batch_envelope_valid(parsed: _Parsed, times: list[str], causations: list[str]) -> bool:
    """One regular expression over all ids and times of the batch (the common, valid case)."""
    if not all(parsed.ok):
        return False
    if not _uuids_valid([*parsed.event_ids, *causations, *parsed.correlation_ids]):
        return False
    days = set()
    for t in times:
        match = _TIME.fullmatch(t)
        if match is None:
            return False
        days.add(match.group(1))
    return _days_valid(days) and all(_name_valid(name) for name in set(parsed.model_names))


def _per_record_envelope(raws: list[Any], parsed: _Parsed) -> None:
    """The slow check, record by record (only when the batch check failed)."""
    for i, raw in enumerate(raws):
        if not parsed.ok[i]:
            continue
        try:
            h = dict(raw.headers)
            causation = h.get("ce_causationid", b"")
            uuids = [parsed.event_ids[i], parsed.correlation_ids[i]]
            if causation != b"":
                uuids.append(causation.decode())
            match = _TIME.fullmatch(h["ce_time"].decode())
        except Exception:  # the pydantic path decides
            parsed.ok[i] = False
            continue
        parsed.ok[i] = (
            all(re.fullmatch(_UUID, u) for u in uuids)
            and match is not None
            and _days_valid({match.group(1)})
            and _name_valid(parsed.model_names[i])
        )


def _uuids_valid(uuids: list[str]) -> bool:
    """Canonical UUIDs, one regular expression for all (one line each: none holds two)."""
    lines = "".join(f"{u}\n" for u in uuids)
    return lines.count("\n") == len(uuids) and _UUIDS.fullmatch(lines) is not None


def _days_valid(days: set[str]) -> bool:
    try:
        return all(date.fromisoformat(day).year >= 1 for day in days)
    except ValueError:
        return False


def _name_valid(name: str) -> bool:
    return len(name) <= 200 and _MODEL_NAME.fullmatch(name) is not None


def _check_fields(
    datas: list[Any], ok: list[bool], allowed: frozenset[str], required: tuple[str, ...]
) -> None:
    for i, data in enumerate(datas):
        if ok[i] and not (data.keys() <= allowed and all(k in data for k in required)):
            ok[i] = False


def _check_predictions(datas: list[Any], rows: list[int], ok: list[bool]) -> None:
    """Column-wise type and range checks; a failing column is re-checked row by row."""
    ds = [datas[i] for i in rows]
    columns = {
        "prediction_id": [d["prediction_id"] for d in ds],
        "version": [d["version"] for d in ds],
        "label": [d["label"] for d in ds],
        "score": [d["score"] for d in ds],
        "latency_ms": [d["latency_ms"] for d in ds],
        "served_by": [d.get("served_by", "champion") for d in ds],
        "source": [d.get("source", "http") for d in ds],
        "request_id": [d.get("request_id") for d in ds],
        "shadow_of": [d.get("shadow_of") for d in ds],
    }
    features = [d["features"] for d in ds]
    if _columns_valid(columns, features):
        return
    for j, (i, d) in enumerate(zip(rows, ds, strict=True)):
        single = {k: [v[j]] for k, v in columns.items()}
        if not _columns_valid(single, [d["features"]]):
            ok[i] = False


def _columns_valid(columns: dict[str, list[Any]], features: list[Any]) -> bool:
    types = set(map(type, columns["prediction_id"]))
    if types - {str}:
        return False
    if set(map(type, columns["version"])) - {int} or set(map(type, columns["label"])) - {int}:
        return False
    if (
        set(map(type, columns["score"])) - _NUMBER
        or set(map(type, columns["latency_ms"])) - _NUMBER
    ):
        return False
    try:
        if not set(columns["served_by"]) <= _SERVED_BY or not set(columns["source"]) <= _SOURCES:
            return False
    except TypeError:  # a list or an object: not one of the literals (pydantic says why)
        return False
    for name in ("request_id", "shadow_of"):
        if set(map(type, columns[name])) - {str, type(None)}:
            return False
    if set(map(type, features)) - {dict}:
        return False
    try:
        if not _features_valid(features):
            return False
        score = np.array(columns["score"], dtype=float)
        latency = np.array(columns["latency_ms"], dtype=float)
    except OverflowError:
        return False
    return bool(
        min(columns["version"]) >= 1
        and np.isfinite(score).all()
        and ((score >= 0) & (score <= 1)).all()
        and np.isfinite(latency).all()
        and (latency >= 0).all()
    )


_drain = deque(maxlen=0).extend


def _features_valid(features: list[dict[str, Any]]) -> bool:
    """Every feature value an ``int`` or a ``float``, and finite as a float. Valid int values
    become the floats pydantic makes of them (in place: the dicts are the decoder's own, and
    ``2**64 - 1`` is not the float ``2.0**64``)."""
    try:
        # all floats, what a producer writes: one C-level pass, nothing kept. ``float.conjugate``
        # returns its float and raises TypeError for anything else (bools and ints included);
        # the values come from orjson, which makes no float subclasses and no NaN or infinity
        _drain(map(float.conjugate, chain.from_iterable(map(dict.values, features))))
        return True
    except TypeError:
        pass
    value_types = set(map(type, chain.from_iterable(map(dict.values, features))))
    if value_types - _NUMBER:
        return False
    if int in value_types:  # JSON floats are finite (orjson refuses the rest); big ints
        values = chain.from_iterable(map(dict.values, features))
        if not np.isfinite(np.fromiter(values, dtype=float)).all():
            return False
        for f in features:
            f.update(zip(list(f), map(float, list(f.values())), strict=True))
    return True


def _append_prediction(batch: PredictionBatch, parsed: _Parsed, i: int) -> None:
    d = parsed.datas[i]
    batch.model_names.append(parsed.model_names[i])
    batch.prediction_ids.append(d["prediction_id"])
    batch.versions.append(d["version"])
    batch.served_by.append(d.get("served_by", "champion"))
    batch.labels.append(d["label"])
    batch.features.append(d["features"])
    batch.event_ids.append(parsed.event_ids[i])
    batch.correlation_ids.append(parsed.correlation_ids[i])


def _append_label(batch: LabelBatch, parsed: _Parsed, i: int) -> None:
    d = parsed.datas[i]
    batch.model_names.append(parsed.model_names[i])
    batch.prediction_ids.append(d["prediction_id"])
    batch.labels.append(d["label"])
    batch.event_ids.append(parsed.event_ids[i])


def _assemble(raws: list[Any], parsed: _Parsed, batch: Any, event_cls: type, append: Any) -> Any:
    """The batch in record order: fast rows as parsed, the others through pydantic."""
    accepted: list[Any] = []
    rejected: Rejected = []
    for i, raw in enumerate(raws):
        if parsed.ok[i]:
            append(batch, parsed, i)
            accepted.append(raw)
            continue
        try:
            event = decode(raw.headers, raw.value, expected=event_cls)
        except ContractError as exc:
            rejected.append((raw, str(exc)))
            continue
        batch.append_event(event)
        accepted.append(raw)
    return batch, accepted, rejected
