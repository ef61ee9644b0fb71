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
from .codec import batch_decoder, data_struct
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
    event_ids: Sequence[str | uuid.UUID] | None = None,
    correlation_id: str | uuid.UUID | None = None,
    causation_id: str | uuid.UUID | None = None,
    occurred_at: datetime | None = None,
) -> list[RawRecord]:
    """One record per row. ``shared``: data values every row has; ``rows``: one sequence (a
    list, a 1-D array, ``DictRows``) per data field that varies (none: one row per event id,
    or one row). ``event_ids`` default to fresh uuid4s; without a ``correlation_id`` each
    event starts its own chain (its correlation id is its event id); ``occurred_at`` defaults
    to now (to the millisecond). Ids may be ``UUID`` objects or strings."""
    return BatchEncoder.of(event_cls, producer).encode(
        shared,
        rows,
        event_ids=event_ids,
        correlation_id=correlation_id,
        causation_id=causation_id,
        occurred_at=occurred_at,
    )


class _Unusual(Exception):
    """A row for the exact checks."""


class BatchEncoder:
    """``encode_batch`` for one event class and producer, with what it derives kept."""

    def __init__(self, event_cls: type[Event], producer: str) -> None:
        if not producer:
            raise ContractError("invalid event: producer: must not be empty")
        self.event_cls = event_cls
        self.producer = producer
        self._struct = data_struct(event_cls)
        loose, self._distinct = batch_decoder(event_cls)
        self._loose = loose.type
        self._checked: dict[tuple[str, Any], bool] = {}  # values found exact already
        self._prefixes: dict[str, tuple[bytes, tuple[tuple[str, bytes], ...]]] = {}

    @classmethod
    @functools.cache
    def of(cls, event_cls: type[Event], producer: str) -> BatchEncoder:
        return cls(event_cls, producer)

    def encode(
        self,
        shared: Mapping[str, Any],
        rows: Mapping[str, Any],
        *,
        event_ids: Sequence[str | uuid.UUID] | None = None,
        correlation_id: str | uuid.UUID | None = None,
        causation_id: str | uuid.UUID | None = None,
        occurred_at: datetime | None = None,
    ) -> list[RawRecord]:
        base = shared if type(shared) is dict else dict(shared)
        if base and not base.keys().isdisjoint(rows):
            raise ValueError(f"both shared and per row: {sorted(base.keys() & rows.keys())}")
        names = tuple(rows)
        columns = []
        for values in rows.values():  # each a list of the rows' values
            kind = type(values)
            if kind is not list:
                values = _dicts(values) if kind is DictRows else _listed(values)
            columns.append(values)
        if columns:
            n = len(columns[0])
            row_values: Any = zip(*columns, strict=True)
        else:  # every value shared: one event per given id, or one
            n = 1 if event_ids is None else len(event_ids)
            row_values = [()] * n
        ids = None if event_ids is None else _event_ids(event_ids, n)
        correlation = None if correlation_id is None else _canonical(correlation_id).encode()
        causation = None if causation_id is None else _canonical(causation_id)
        when = (_now() if occurred_at is None else _rfc3339(occurred_at)).encode()
        caused = () if causation is None else (("ce_causationid", causation.encode()),)
        convert, dumps, loose, distinct = msgspec.convert, orjson.dumps, self._loose, self._distinct
        checked, prefixes = self._checked, self._prefixes
        out: list[RawRecord] = []
        for i, values in enumerate(row_values):
            data = base.copy()
            data.update(zip(names, values, strict=False))  # one value per name, by construction
            event_id = random_uuid() if ids is None else ids[i]
            try:  # the derived struct, its patterns once per distinct value
                convert(data, loose)
                for name in distinct:
                    if not checked.get((name, data.get(name))):
                        raise _Unusual
                value = dumps(data)
            except Exception:
                out.append(self._unusual(data, event_id, (when, correlation, causation)))
                continue
            model_name = data["model_name"]
            key, prefix = prefixes.get(model_name) or self._prefix(model_name)
            eid = event_id.encode()
            headers = [
                *prefix,
                ("ce_id", eid),
                ("ce_time", when),
                ("ce_correlationid", correlation or eid),
                *caused,
            ]
            out.append((key, value, headers))
        return out

    def _unusual(
        self, data: dict[str, Any], event_id: str, envelope: tuple[bytes, bytes | None, str | None]
    ) -> RawRecord:
        """A row the loose struct refused, or with a value not seen yet in a checked field:
        checked exactly (and remembered), else built and encoded by pydantic. The struct checks
        the Python values rather than the JSON written: orjson writes NaN as null. A row must
        name its model (pydantic has no subject header to take it from)."""
        when, correlation, causation = envelope
        try:
            msgspec.convert(data, self._struct)
            name = data.get("model_name")
            if type(name) is not str:
                raise _Unusual
            for field in self._distinct:
                if len(self._checked) < 4096:
                    self._checked[field, data.get(field)] = True
            value = orjson.dumps(data)
        except Exception:
            pydantic_envelope = (event_id, when.decode(), correlation, causation)
            return _pydantic_record(self.event_cls, self.producer, pydantic_envelope, data)
        key, prefix = self._prefixes.get(name) or self._prefix(name)
        eid = event_id.encode()
        caused = () if causation is None else (("ce_causationid", causation.encode()),)
        headers = [
            *prefix,
            ("ce_id", eid),
            ("ce_time", when),
            ("ce_correlationid", correlation or eid),
            *caused,
        ]
        return key, value, headers

    def _prefix(self, model_name: str) -> tuple[bytes, tuple[tuple[str, bytes], ...]]:
        """The key and the headers all events of this type, model and producer share, encoded
        once."""
        prefix = (
            ("ce_specversion", SPECVERSION.encode()),
            ("ce_type", self.event_cls.event_type.encode()),
            ("ce_subject", model_name.encode()),
            ("content-type", JSON.encode()),
            ("ce_source", self.producer.encode()),
        )
        if len(self._prefixes) < 4096:
            self._prefixes[model_name] = (model_name.encode(), prefix)
        return model_name.encode(), prefix


def _dicts(values: DictRows) -> list[dict[str, Any]]:
    keys = tuple(values.keys)
    matrix = values.values
    if hasattr(matrix, "tolist"):  # numpy: one row of Python floats per dict
        if matrix.ndim != 2 or matrix.shape[1] != len(keys):
            raise ValueError(f"{matrix.shape} values for {len(keys)} keys")
        return [dict(zip(keys, row, strict=False)) for row in matrix.tolist()]
    return [dict(zip(keys, row, strict=True)) for row in matrix]


def _listed(values: Any) -> list[Any]:
    return values.tolist() if hasattr(values, "tolist") else list(values)  # type: ignore[no-any-return]


def _pydantic_record(
    event_cls: type[Event],
    producer: str,
    envelope: tuple[str, str, bytes | None, str | None],
    data: dict[str, Any],
) -> RawRecord:
    event_id, when, correlation_id, causation = envelope
    correlation = event_id if correlation_id is None else correlation_id.decode()
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


def _event_ids(given: Sequence[str | uuid.UUID] | None, n: int) -> list[str]:
    if given is None:
        return [random_uuid() for _ in range(n)]
    if len(given) != n:
        raise ValueError(f"{len(given)} event ids for {n} rows")
    return [_canonical(i) for i in given]


def _canonical(value: str | uuid.UUID) -> str:
    """A UUID as pydantic gives it back (lowercase, hyphenated)."""
    if type(value) is uuid.UUID:
        return str(value)
    text = str(value)
    try:
        return str(uuid.UUID(text))
    except ValueError as exc:
        raise ContractError(f"invalid event: not a UUID: {text!r}") from exc


class _Clock:
    """Now, as an RFC 3339 UTC time to the millisecond: the date and time of day formatted
    once a second, the whole once a millisecond (events in the same millisecond share it)."""

    def __init__(self) -> None:
        self._second = self._milli = -1
        self._prefix = self._text = ""

    def now(self) -> str:
        milli = int(time.time() * 1000)
        if milli != self._milli:
            second, rest = divmod(milli, 1000)
            if second != self._second:
                self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
                self._second = second
            self._milli, self._text = milli, f"{self._prefix}.{rest:03d}Z"
        return self._text


_now = _Clock().now


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
