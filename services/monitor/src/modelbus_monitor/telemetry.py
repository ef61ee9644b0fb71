"""Columnar decoding of the high-volume telemetry (``prediction.made.v1``, ``label.observed.v1``)
straight from the Kafka records into column lists, without a pydantic model per event.

The fast path accepts only records whose shape is unambiguous: binary-mode CloudEvents with the
headers ``encode`` writes (lowercase names, UTF-8), canonical lowercase UUIDs, an RFC 3339 UTC
time, a JSON object with only the event's fields and exact JSON types (``int`` for ints,
``int``/``float`` for floats, ``str`` for strings), finite numbers within the contract's bounds.
The checks run per column (type sets, one regular expression over all ids, numpy for ranges and
finiteness). Every record the fast path does not accept goes through ``modelbus_contracts.decode``
(pydantic), which either accepts it (coercions such as ``"1.5"`` -> 1.5 included) or rejects it
with the contract's reason: the result is the same set of accepted events, with the same values,
and the same dead-letter reasons as decoding every record with pydantic.
"""

from __future__ import annotations

import gc
import re
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
_TIME = re.compile(
    r"(\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01]))"
    r"T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d{1,6})?(?:Z|\+00:00)"
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
    envelope = _batch_envelope(raws, PredictionMade.event_type, _PREDICTION_FIELDS)
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
    envelope = _batch_envelope(raws, LabelObserved.event_type, _LABEL_FIELDS)
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

_UUIDS_BYTES = re.compile(_UUIDS.pattern.encode())
_TIMES_BYTES = re.compile(b"(?:" + _TIME.pattern.encode() + b"\n)*")
_Envelope = tuple[list[str], list[str], list[dict[str, Any]], list[str]]


def _batch_envelope(raws: list[Any], event_type: str, fields: frozenset[str]) -> _Envelope | None:
    """Headers and JSON of a whole batch checked column by column: (event ids, correlation
    ids, data, model names), or None when anything is unusual (then record by record)."""
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
        ids = b"\n".join(hs["ce_id"]) + b"\n"
        correlations = b"\n".join(hs["ce_correlationid"]) + b"\n"
        causations = [c for c in hs.get("ce_causationid", ()) if c is not _ABSENT and c != b""]
        if not (_uuid_lines(ids, n) and _uuid_lines(correlations, n)):
            return None
        if causations and not _uuid_lines(b"\n".join(causations) + b"\n", len(causations)):
            return None
        if not _times_valid(hs["ce_time"]):
            return None
        sources = hs["ce_source"]
        if not all(sources):
            return None
        b"".join(sources).decode()
        # one parse for the batch; every record must be exactly one element (else: by record)
        datas = orjson.loads(b"[" + b",".join([raw.value for raw in raws]) + b"]")
        if len(datas) != n:
            return None
        if set(map(type, datas)) != {dict} or not set().union(*datas) <= fields:
            return None
        subjects = hs.get("ce_subject") or [_ABSENT] * n
        names = [
            d["model_name"] if "model_name" in d else (b"" if s is _ABSENT else s).decode()
            for d, s in zip(datas, subjects, strict=True)
        ]
        if set(map(type, names)) != {str} or not all(map(_name_valid, set(names))):
            return None
    except Exception:  # a missing header, bad UTF-8 or JSON: record by record
        return None
    return ids.decode().split("\n")[:-1], correlations.decode().split("\n")[:-1], datas, names


def _header_columns(raws: list[Any]) -> dict[str, list[Any]] | None:
    """Header name -> the records' values, when every record has the same headers in the same
    order (what one producer writes): a transpose, no dict per record. Else None."""
    try:
        rows = [raw.headers for raw in raws]
        if len(set(map(len, rows))) != 1:
            return None
        out: dict[str, list[Any]] = {}
        for column in zip(*rows, strict=True):
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
_TIME_SEPARATORS = {4: b"-", 7: b"-", 10: b"T", 13: b":", 16: b":", 19: b".", 26: b"Z"}
_TIME_DIGITS = [i for i in range(_CANONICAL_TIME) if i not in _TIME_SEPARATORS]


def _times_valid(times: list[bytes]) -> bool:
    """RFC 3339 UTC times (``_TIME``) with real calendar days; the canonical fixed-width form
    is checked as a byte matrix with numpy, anything else with the regular expression."""
    joined = b"".join(times)
    n = len(times)
    if len(joined) != _CANONICAL_TIME * n:
        if not _TIMES_BYTES.fullmatch(b"\n".join(times) + b"\n"):
            return False
        return _days_valid({t[:10].decode() for t in times})
    chars = np.frombuffer(joined, dtype=np.uint8).reshape(n, _CANONICAL_TIME)
    for at, sep in _TIME_SEPARATORS.items():
        if not (chars[:, at] == sep[0]).all():
            return False
    digits = chars[:, _TIME_DIGITS].astype(np.int16) - ord("0")
    if not ((digits >= 0) & (digits <= 9)).all():
        return False
    hours, minutes, seconds = (digits[:, k] * 10 + digits[:, k + 1] for k in (8, 10, 12))
    if (hours > 23).any() or (minutes > 59).any() or (seconds > 59).any():
        return False
    days = set(np.ascontiguousarray(chars[:, :10]).view("S10").ravel().tolist())
    return _days_valid({day.decode() for day in days})


def _uuid_lines(lines: bytes, n: int) -> bool:
    """``n`` canonical lowercase UUIDs, one per line: fixed width, hyphens at 8, 13, 18 and
    23, nothing but hex digits elsewhere (C-speed slicing instead of a regex per id)."""
    width = 37
    if len(lines) != width * n or lines[36::width] != b"\n" * n:
        return False
    if any(lines[at::width] != b"-" * n for at in (8, 13, 18, 23)):
        return False
    return lines.count(b"-") == 4 * n and not lines.translate(None, b"0123456789abcdef-\n")


def _batch_predictions(
    ids: list[str], correlations: list[str], datas: list[dict[str, Any]], names: list[str]
) -> PredictionBatch | None:
    if set(map(len, datas)) == {len(_PREDICTION_FIELDS)}:  # every field in every record
        return _complete_predictions(ids, correlations, datas, names)
    try:
        columns = {
            "prediction_id": [d["prediction_id"] for d in datas],
            "version": [d["version"] for d in datas],
            "label": [d["label"] for d in datas],
            "score": [d["score"] for d in datas],
            "latency_ms": [d["latency_ms"] for d in datas],
            "served_by": [d.get("served_by", "champion") for d in datas],
            "source": [d.get("source", "http") for d in datas],
            "request_id": [d.get("request_id") for d in datas],
            "shadow_of": [d.get("shadow_of") for d in datas],
        }
        features = [d["features"] for d in datas]
    except KeyError:
        return None
    if not _columns_valid(columns, features):
        return None
    return PredictionBatch(
        model_names=names,
        prediction_ids=columns["prediction_id"],
        versions=columns["version"],
        served_by=columns["served_by"],
        labels=columns["label"],
        features=features,
        event_ids=ids,
        correlation_ids=correlations,
    )


_ALL_PREDICTION_FIELDS = (
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


def _complete_predictions(
    ids: list[str], correlations: list[str], datas: list[dict[str, Any]], names: list[str]
) -> PredictionBatch | None:
    """Records with every field present (what ``encode`` writes): the columns in one pass."""
    rows = map(itemgetter(*_ALL_PREDICTION_FIELDS), datas)
    *values, features = (list(column) for column in zip(*rows, strict=True))
    columns = dict(zip(_ALL_PREDICTION_FIELDS[:-1], values, strict=True))
    if not _columns_valid(columns, features):
        return None
    return PredictionBatch(
        model_names=names,
        prediction_ids=columns["prediction_id"],
        versions=columns["version"],
        served_by=columns["served_by"],
        labels=columns["label"],
        features=features,
        event_ids=ids,
        correlation_ids=correlations,
    )


def _batch_labels(
    ids: list[str], correlations: list[str], datas: list[dict[str, Any]], names: list[str]
) -> LabelBatch | None:
    try:
        pids = [d["prediction_id"] for d in datas]
        labels = [d["label"] for d in datas]
    except KeyError:
        return None
    if set(map(type, pids)) != {str} or not all(pids):
        return None
    if set(map(type, labels)) != {int} or not set(labels) <= {0, 1}:
        return None
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
    if not _UUIDS.fullmatch("".join(f"{u}\n" for u in (*parsed.event_ids, *causations))):
        return False
    if not _UUIDS.fullmatch("".join(f"{u}\n" for u in parsed.correlation_ids)):
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
    if not set(columns["served_by"]) <= _SERVED_BY or not set(columns["source"]) <= _SOURCES:
        return False
    for name in ("request_id", "shadow_of"):
        if set(map(type, columns[name])) - {str, type(None)}:
            return False
    if set(map(type, features)) - {dict}:
        return False
    value_types = set(map(type, chain.from_iterable(map(dict.values, features))))
    if value_types - _NUMBER:
        return False
    try:
        score = np.array(columns["score"], dtype=float)
        latency = np.array(columns["latency_ms"], dtype=float)
        if int in value_types:  # JSON floats are finite (orjson refuses the rest); big ints
            values = chain.from_iterable(map(dict.values, features))
            if not np.isfinite(np.fromiter(values, dtype=float)).all():
                return False
    except OverflowError:
        return False
    return bool(
        min(columns["version"]) >= 1
        and np.isfinite(score).all()
        and ((score >= 0) & (score <= 1)).all()
        and np.isfinite(latency).all()
        and (latency >= 0).all()
    )


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
