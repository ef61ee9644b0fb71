"""The batch encoder: many events of one type, given as columns, straight to CloudEvents Kafka
records (binary mode, what ``encode`` writes), without a pydantic model per event.

``encode_batch(PredictionMade, producer=..., shared={...}, rows={...})`` builds row ``i``'s
event from the values every row shares and row ``i`` of each column; the records decode to
exactly the events pydantic would build from the same values (``event_cls(**values)``), and a
row pydantic rejects raises ``ContractError`` with its reason. Each row's values are checked by
the event's derived struct (``codec``); a row it does not take (a value pydantic coerces, a
model instead of a dict) is built and encoded by pydantic instead.
"""

from __future__ import annotations

import functools
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import msgspec
import orjson
from pydantic import ValidationError

from .cloudevents import JSON, SPECVERSION, ContractError, encode, summarise
from .codec import data_struct
from .envelope import Event

# key, value, headers: a Kafka record ready to publish
RawRecord = tuple[bytes, bytes, list[tuple[str, bytes]]]


class DictRows(NamedTuple):
    """A column of dicts given as their keys and one row of values per dict (a 2-D array or a
    list of lists): the features of a scored batch, say."""

    keys: Sequence[str]
    values: Any


def encode_batch(
    event_cls: type[Event],
    *,
    producer: str,
    shared: Mapping[str, Any],
    rows: Mapping[str, Any],
    event_ids: Sequence[str] | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    occurred_at: datetime | None = None,
) -> list[RawRecord]:
    """One record per row. ``shared``: data values every row has; ``rows``: one sequence (a
    list, a 1-D array, ``DictRows``) per data field that varies (none: one row per event id,
    or one row). ``event_ids`` default to fresh
    uuid4s; without a ``correlation_id`` each event starts its own chain (its correlation id
    is its event id); ``occurred_at`` defaults to now (to the millisecond)."""
    return BatchEncoder.of(event_cls, producer).encode(
        shared,
        rows,
        event_ids=event_ids,
        correlation_id=correlation_id,
        causation_id=causation_id,
        occurred_at=occurred_at,
    )


class BatchEncoder:
    """``encode_batch`` for one event class and producer, with what it derives kept."""

    def __init__(self, event_cls: type[Event], producer: str) -> None:
        if not producer:
            raise ContractError("invalid event: producer: must not be empty")
        self.event_cls = event_cls
        self.producer = producer
        self._struct = data_struct(event_cls)
        self._structs = list[self._struct]  # type: ignore[name-defined]
        self._prefixes: dict[str, tuple[tuple[str, bytes], ...]] = {}

    @classmethod
    @functools.cache
    def of(cls, event_cls: type[Event], producer: str) -> BatchEncoder:
        return cls(event_cls, producer)

    def encode(
        self,
        shared: Mapping[str, Any],
        rows: Mapping[str, Any],
        *,
        event_ids: Sequence[str] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> list[RawRecord]:
        datas = _datas(shared, rows, 1 if event_ids is None else len(event_ids))
        ids = _event_ids(event_ids, len(datas))
        correlation = None if correlation_id is None else _canonical(correlation_id)
        causation = None if causation_id is None else _canonical(causation_id)
        when = _now() if occurred_at is None else _rfc3339(occurred_at)
        out: list[RawRecord] = []
        for data, value, event_id in zip(datas, self._values(datas), ids, strict=True):
            envelope = (event_id, when, correlation or event_id, causation)
            name = data.get("model_name")
            if value is None or type(name) is not str:  # not for the derived struct: pydantic
                out.append(_pydantic_record(self.event_cls, self.producer, envelope, data))
                continue
            prefix = self._prefixes.get(name) or self._prefix(name)
            out.append((name.encode(), value, _headers(prefix, envelope)))
        return out

    def _values(self, datas: list[dict[str, Any]]) -> list[bytes | None]:
        """The JSON of each row, or None for a row the derived struct does not take as it is.
        The struct checks the Python values (``convert``) rather than the JSON written: orjson
        writes NaN as null."""
        convert, struct, dumps = msgspec.convert, self._struct, orjson.dumps
        try:
            convert(datas, self._structs)
            return list(map(dumps, datas))
        except Exception:  # some row is unusual: row by row
            pass
        out: list[bytes | None] = []
        for data in datas:
            try:
                convert(data, struct)
                out.append(dumps(data))
            except Exception:
                out.append(None)
        return out

    def _prefix(self, model_name: str) -> tuple[tuple[str, bytes], ...]:
        """The headers all events of this type, model and producer share, encoded once."""
        prefix = (
            ("ce_specversion", SPECVERSION.encode()),
            ("ce_type", self.event_cls.event_type.encode()),
            ("ce_subject", model_name.encode()),
            ("content-type", JSON.encode()),
            ("ce_source", self.producer.encode()),
        )
        if len(self._prefixes) < 4096:
            self._prefixes[model_name] = prefix
        return prefix


def _datas(shared: Mapping[str, Any], rows: Mapping[str, Any], n: int) -> list[dict[str, Any]]:
    """Each row's data: the shared values and the row's (``n`` rows if no column varies)."""
    if not rows:
        return [dict(shared) for _ in range(n)]
    if not shared.keys().isdisjoint(rows):
        raise ValueError(f"both shared and per row: {sorted(set(shared) & set(rows))}")
    names = tuple(rows)
    columns = [values if type(values) is list else _column(values) for values in rows.values()]
    copy = dict(shared).copy
    datas = []
    for values in zip(*columns, strict=True):
        data = copy()
        data.update(zip(names, values, strict=False))  # one value per name, by construction
        datas.append(data)
    return datas


def _column(values: Any) -> list[Any]:
    if isinstance(values, DictRows):
        keys = tuple(values.keys)
        tolist = getattr(values.values, "tolist", None)
        return [
            dict(zip(keys, row, strict=True)) for row in (tolist() if tolist else values.values)
        ]
    tolist = getattr(values, "tolist", None)  # numpy: Python ints and floats
    return tolist() if tolist is not None else list(values)  # type: ignore[no-any-return]


def _pydantic_record(
    event_cls: type[Event], producer: str, envelope: tuple[str, str, str, str | None], data: dict
) -> RawRecord:
    event_id, when, correlation, causation = envelope
    try:
        event = event_cls.model_validate(
            {
                **data,
                "event_id": event_id,
                "occurred_at": when,
                "producer": producer,
                "correlation_id": correlation,
                "causation_id": causation,
            }
        )
    except ValidationError as exc:
        raise ContractError(summarise(exc)) from exc
    record = encode(event)
    return record.key, record.value, [(k, v.encode()) for k, v in record.headers.items()]


# -- the envelope --------------------------------------------------------------------------------


def _headers(
    prefix: tuple[tuple[str, bytes], ...], envelope: tuple[str, str, str, str | None]
) -> list[tuple[str, bytes]]:
    event_id, when, correlation, causation = envelope
    headers = [
        *prefix,
        ("ce_id", event_id.encode()),
        ("ce_time", when.encode()),
        ("ce_correlationid", correlation.encode()),
    ]
    if causation is not None:
        headers.append(("ce_causationid", causation.encode()))
    return headers


def _event_ids(given: Sequence[str] | None, n: int) -> list[str]:
    if given is None:
        return [random_uuid() for _ in range(n)]
    if len(given) != n:
        raise ValueError(f"{len(given)} event ids for {n} rows")
    return [_canonical(i) for i in given]


def _canonical(value: str | uuid.UUID) -> str:
    """A UUID as pydantic gives it back (lowercase, hyphenated)."""
    text = str(value)
    try:
        return str(uuid.UUID(text))
    except ValueError as exc:
        raise ContractError(f"invalid event: not a UUID: {text!r}") from exc


def _now() -> str:
    """Now, as an RFC 3339 UTC time to the millisecond; formatted once per millisecond."""
    global _last_milli, _last_now
    milli = int(time.time() * 1000)
    if milli != _last_milli:
        second, rest = divmod(milli, 1000)
        stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _last_milli, _last_now = milli, f"{stamp}.{rest:03d}Z"
    return _last_now


_last_milli, _last_now = -1, ""


def _rfc3339(moment: datetime) -> str:
    """The time as ``encode`` writes it (a naive time is UTC, as the envelope says)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    text = moment.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


# -- ids -----------------------------------------------------------------------------------------


class _Ids:
    """Random 128-bit ids from a per-process pool refilled from ``os.urandom`` 4,096 at a time:
    unique like ``uuid4`` (122 random bits in a UUID), at a fraction of its cost."""

    POOL = 4096

    def __init__(self) -> None:
        self._hex = ""
        self._next = self._end = 0

    def hex(self) -> str:
        """32 hex digits (the format of ``uuid4().hex``)."""
        if self._next == self._end:
            self._hex = os.urandom(16 * self.POOL).hex()
            self._next, self._end = 0, 32 * self.POOL
        i = self._next
        self._next = i + 32
        return self._hex[i : i + 32]

    def uuid(self) -> str:
        """A version 4 UUID string."""
        h = self.hex()
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}
_ids = _Ids()
random_uuid = _ids.uuid
random_hex = _ids.hex


__all__ = ["BatchEncoder", "DictRows", "RawRecord", "encode_batch", "random_hex", "random_uuid"]
