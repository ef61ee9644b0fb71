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
from itertools import repeat
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
        self._checked: dict[tuple[str, Any], bool] = {}  # distinct values checked already
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
        datas = _datas(shared, rows, 1 if event_ids is None else len(event_ids))
        if event_ids is None:
            ids = [random_uuid() for _ in datas]
        else:
            ids = _event_ids(event_ids, len(datas))
        correlation = None if correlation_id is None else _canonical(correlation_id).encode()
        causation = None if causation_id is None else _canonical(causation_id)
        when = (_now() if occurred_at is None else _rfc3339(occurred_at)).encode()
        caused = () if causation is None else (("ce_causationid", causation.encode()),)
        prefixes = self._prefixes
        out: list[RawRecord] = []
        for data, value, event_id in zip(datas, self._values(datas), ids, strict=True):
            if value is None:  # not for the derived struct: pydantic builds and encodes it
                envelope = (event_id, when.decode(), correlation, causation)
                out.append(_pydantic_record(self.event_cls, self.producer, envelope, data))
                continue
            name = data["model_name"]
            key, prefix = prefixes.get(name) or self._prefix(name)
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

    def _values(self, datas: list[dict[str, Any]]) -> list[bytes | None]:
        """The JSON of each row, or None for a row the derived struct does not take as it is.
        The struct checks the Python values (``convert``) rather than the JSON written: orjson
        writes NaN as null. Patterns are checked once per distinct value (``batch_decoder``),
        and a row must name its model (pydantic has no subject header to take it from)."""
        dumps, convert, loose = orjson.dumps, msgspec.convert, self._loose
        try:
            for data in datas:  # one by one: msgspec prepares list[...] again on every call
                convert(data, loose)
            if self._distinct_ok(datas):
                return list(map(dumps, datas))
        except Exception:  # some row is unusual: row by row
            pass
        out: list[bytes | None] = []
        for data in datas:
            try:
                msgspec.convert(data, self._struct)
                if type(data.get("model_name")) is not str:
                    raise ValueError("no model name")
                out.append(dumps(data))
            except Exception:
                out.append(None)
        return out

    def _distinct_ok(self, datas: list[dict[str, Any]]) -> bool:
        checked = self._checked
        for name, exact in self._distinct.items():
            values = [datas[0].get(name, msgspec.UNSET)] if len(datas) == 1 else None
            for value in values or {d.get(name, msgspec.UNSET) for d in datas}:
                ok = checked.get((name, value))
                if ok is None:
                    ok = _exact(value, exact) and (name != "model_name" or type(value) is str)
                    if len(checked) < 4096:
                        checked[name, value] = ok
                if not ok:
                    return False
        return True

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


def _exact(value: Any, exact: Any) -> bool:
    """Whether a value (absent and None aside) has the field's exact type."""
    if value is None or value is msgspec.UNSET:
        return True
    try:
        msgspec.convert(value, exact)
    except msgspec.ValidationError:
        return False
    return True


def _datas(shared: Mapping[str, Any], rows: Mapping[str, Any], n: int) -> list[dict[str, Any]]:
    """Each row's data: the shared values and the row's (``n`` rows if no column varies)."""
    if not rows:
        return [dict(shared) for _ in range(n)]
    if not shared.keys().isdisjoint(rows):
        raise ValueError(f"both shared and per row: {sorted(set(shared) & set(rows))}")
    names = tuple(rows)
    columns = [values if type(values) is list else _column(values) for values in rows.values()]
    copy = shared.copy if type(shared) is dict else dict(shared).copy
    datas = []
    for values in zip(*columns, strict=True):
        data = copy()
        data.update(zip(names, values, strict=False))  # one value per name, by construction
        datas.append(data)
    return datas


def _column(values: Any) -> list[Any]:
    if type(values) is DictRows:
        keys = tuple(values.keys)
        matrix = values.values
        if hasattr(matrix, "tolist"):  # numpy: one row of Python floats per dict
            if matrix.ndim != 2 or matrix.shape[1] != len(keys):
                raise ValueError(f"{matrix.shape} values for {len(keys)} keys")
            return list(map(dict, map(zip, repeat(keys), matrix.tolist())))
        return [dict(zip(keys, row, strict=True)) for row in matrix]
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
