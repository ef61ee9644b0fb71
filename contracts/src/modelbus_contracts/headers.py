"""The CloudEvents envelope of binary-mode Kafka records, checked without pydantic: for one
record (``record_envelope``, the plain version) and for a whole batch at once
(``envelope_columns``, column by column).

Both accept only what ``encode`` writes and its usual variants: header names in lowercase, each
once, bytes values; the expected ``ce_type``; ``ce_specversion`` 1.0 and ``content-type``
application/json when present; canonical lowercase UUIDs in ``ce_id`` and ``ce_correlationid``
(and in ``ce_causationid`` unless absent or empty); an RFC 3339 UTC ``ce_time``; a UTF-8,
non-empty ``ce_source``. Anything else is left to ``cloudevents.decode`` (pydantic), which
accepts it (an uppercase UUID, an offset time, a header named ``Ce_Id``...) or rejects it with
the contract's reason. The values are those pydantic gives: ids as their canonical strings.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter, itemgetter
from typing import Any

import msgspec

from .cloudevents import JSON, SPECVERSION

REQUIRED = ("ce_type", "ce_id", "ce_time", "ce_source", "ce_correlationid")
KNOWN = frozenset({*REQUIRED, "ce_specversion", "ce_subject", "content-type", "ce_causationid"})
_SPECVERSION = SPECVERSION.encode()
_JSON = JSON.encode()

_UUID = rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_UUID_RE = re.compile(_UUID)
# [0-9], not \d: the pattern is bytes here, but the digits of other scripts must never pass
_TIME = (
    rb"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    rb"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?(?:Z|\+00:00)"
)
_TIME_RE = re.compile(_TIME)
_TIMES_RE = re.compile(b"(?:" + _TIME + b"\n)*")
_TIMES_JSON = msgspec.json.Decoder(list[datetime])


@dataclass(slots=True)
class Envelope:
    """The envelope of a batch, one list per field (``subject``: the raw header; None or
    ``_ABSENT`` where there is none)."""

    event_id: list[str]
    occurred_at: list[datetime]
    producer: list[str]
    correlation_id: list[str]
    causation_id: list[str | None]
    subject: list[Any]


class _Absent:
    """A header a record does not have."""


_ABSENT: Any = _Absent()
_first, _second = itemgetter(0), itemgetter(1)
_headers_of = attrgetter("headers")


# -- one record ----------------------------------------------------------------------------------


def record_envelope(headers: Any, event_type: bytes) -> tuple[Any, ...] | None:
    """(event_id, occurred_at, producer, correlation_id, causation_id, subject) of one record,
    or None when pydantic must decide."""
    try:
        h: dict[str, bytes] = {}
        for name, value in headers:
            if name not in KNOWN or name in h or type(value) is not bytes:
                return None
            h[name] = value
        if h.get("ce_type") != event_type:
            return None
        if h.get("ce_specversion", _SPECVERSION) != _SPECVERSION:
            return None
        if h.get("content-type", _JSON) != _JSON:
            return None
        causation = h.get("ce_causationid", b"")
        source = h["ce_source"].decode()
        if not source:
            return None
        return (
            _uuid(h["ce_id"]),
            _time(h["ce_time"]),
            source,
            _uuid(h["ce_correlationid"]),
            _uuid(causation) if causation else None,
            h.get("ce_subject"),
        )
    except (KeyError, ValueError, TypeError):
        return None


def _uuid(value: bytes) -> str:
    if _UUID_RE.fullmatch(value) is None:
        raise ValueError("not a canonical UUID")
    return value.decode()


def _time(value: bytes) -> datetime:
    if _TIME_RE.fullmatch(value) is None:
        raise ValueError("not an RFC 3339 UTC time")
    return datetime.fromisoformat(value.decode())


# -- a whole batch -------------------------------------------------------------------------------


def envelope_columns(raws: Sequence[Any], event_type: bytes) -> Envelope | None:
    """The envelope of every record, checked column by column; None when any record is unusual
    (then ``record_envelope`` record by record). Same result as ``record_envelope`` on each."""
    n = len(raws)
    if not n:
        return None
    try:
        hs = _header_columns(raws) or _header_dicts(raws)
        if hs is None or not hs.keys() <= KNOWN or not hs.keys() >= set(REQUIRED):
            return None
        if not all(_all_bytes(hs[name]) for name in REQUIRED):
            return None
        if not _only(hs["ce_type"], {event_type}):
            return None
        if not _only(hs.get("ce_specversion", ()), {_SPECVERSION, _ABSENT}):
            return None
        if not _only(hs.get("content-type", ()), {_JSON, _ABSENT}):
            return None
        subjects = hs.get("ce_subject")
        if subjects is not None and not _only(map(type, subjects), {bytes, _Absent}):
            return None
        ids = _uuid_column(hs["ce_id"])
        correlations = _uuid_column(hs["ce_correlationid"])
        causations = _causation_column(hs.get("ce_causationid"), n)
        times = _time_column(hs["ce_time"])
        sources = _text_column(hs["ce_source"])
        if ids is None or correlations is None or causations is None:
            return None
        if times is None or sources is None:
            return None
    except Exception:  # an odd header layout or value: record by record
        return None
    return Envelope(ids, times, sources, correlations, causations, subjects or [None] * n)


class _Same(list):  # type: ignore[type-arg]
    """A header column with one value in every record (kept once in ``value``)."""

    __slots__ = ("value",)

    def __init__(self, value: Any, n: int) -> None:
        super().__init__([value] * n)
        self.value = value


def _all_bytes(values: list[Any]) -> bool:
    if type(values) is _Same:
        return type(values.value) is bytes
    return set(map(type, values)) == {bytes}


def _only(values: Any, allowed: set[Any]) -> bool:
    if type(values) is _Same:
        return values.value in allowed
    return set(values) <= allowed


def _header_columns(raws: Sequence[Any]) -> dict[str, list[Any]] | None:
    """Header name -> the records' values, when every record has the same header names in the
    same order (what one producer writes): a transpose, no dict per record. Else None."""
    rows = list(map(_headers_of, raws))
    if len(set(map(len, rows))) != 1:
        return None
    n = len(rows)
    out: dict[str, list[Any]] = {}
    for column in zip(*rows, strict=True):
        head = column[0]
        if head == column[-1] and column.count(head) == n:  # the same (name, value) in all
            name = head[0]
            values: list[Any] = _Same(head[1], n)
        else:
            names = set(map(_first, column))
            if len(names) != 1:
                return None
            name = names.pop()
            values = list(map(_second, column))
        if name in out:  # a repeated header
            return None
        out[name] = values
    return out


def _header_dicts(raws: Sequence[Any]) -> dict[str, list[Any]] | None:
    """Header name -> the records' values (``_ABSENT`` where a record lacks it), via one dict
    per record; None if a record repeats a header."""
    rows = list(map(_headers_of, raws))
    dicts = list(map(dict, rows))
    if list(map(len, dicts)) != list(map(len, rows)):
        return None
    return {name: [h.get(name, _ABSENT) for h in dicts] for name in set().union(*dicts)}


_UUID_WIDTH = 37  # 36 characters and a line break


def _uuid_column(values: list[bytes]) -> list[str] | None:
    """Canonical lowercase UUIDs, one per line in one buffer: fixed width, line breaks only at
    the ends, hyphens at 8, 13, 18 and 23, nothing but hex digits elsewhere."""
    n = len(values)
    lines = b"\n".join(values) + b"\n"
    width = _UUID_WIDTH
    if len(lines) != width * n or lines[36::width] != b"\n" * n:
        return None
    if any(lines[at::width] != b"-" * n for at in (8, 13, 18, 23)):
        return None
    if lines.translate(None, b"0123456789abcdef") != b"----\n" * n:
        return None
    return lines[:-1].decode().split("\n")


def _causation_column(values: list[Any] | None, n: int) -> list[str | None] | None:
    if values is None:
        return [None] * n
    present = [v for v in values if v is not _ABSENT and v != b""]
    if not present:
        return [None] * n
    checked = _uuid_column(present)
    if checked is None:
        return None
    found = iter(checked)
    return [None if v is _ABSENT or v == b"" else next(found) for v in values]


def _time_column(values: list[bytes]) -> list[datetime] | None:
    """RFC 3339 UTC times with real calendar days, parsed all at once as a JSON array (the
    pattern leaves nothing in them to escape)."""
    n = len(values)
    lines = b"\n".join(values) + b"\n"
    if lines.count(b"\n") != n or _TIMES_RE.fullmatch(lines) is None:
        return None
    try:
        return _TIMES_JSON.decode(b'["' + b'","'.join(values) + b'"]')
    except msgspec.ValidationError:  # February 30th, year 0
        return None


def _text_column(values: list[bytes]) -> list[str] | None:
    """Non-empty UTF-8 strings, each distinct value decoded once."""
    if type(values) is _Same:
        text = values.value.decode()
        return [text] * len(values) if text else None
    texts = {v: v.decode() for v in set(values)}
    if not all(texts.values()):
        return None
    return list(map(texts.__getitem__, values))


__all__ = ["KNOWN", "REQUIRED", "Envelope", "envelope_columns", "record_envelope"]
