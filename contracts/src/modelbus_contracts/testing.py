"""The reference the fast codecs are tested against, for the contracts' tests and any service
test that feeds them: records shaped like aiokafka's, pydantic's decoding record by record,
and a comparison that tells ``1`` from ``1.0`` and ``True``."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from .cloudevents import ContractError, decode, encode
from .columns import Columns, Decoded, decode_batch, decode_by_record
from .envelope import Event
from .events import LabelObserved, PredictionMade

DROP: Any = object()  # a data field to leave out


@dataclass
class Record:
    """A consumed Kafka record as the bus reads it (the shape of aiokafka's)."""

    headers: list[tuple[str, Any]]
    value: bytes
    offset: int = 0
    topic: str = ""
    partition: int = 0
    key: bytes | None = field(default=None, compare=False)


def record_of(
    event: Event,
    offset: int = 0,
    *,
    value: bytes | None = None,
    headers: dict[str, Any] | None = None,
    drop: Sequence[str] = (),
    **data: Any,
) -> Record:
    """``event`` encoded in binary mode; ``headers`` replace (or add) headers, ``drop`` removes
    them, ``value`` replaces the JSON, and keyword arguments change data fields (``DROP``
    removes one)."""
    encoded = encode(event)
    hdrs = [(k, v.encode()) for k, v in encoded.headers.items() if k not in drop]
    if headers:
        hdrs = [(k, v) for k, v in hdrs if k not in headers] + list(headers.items())
    body = encoded.value if value is None else value
    if data:
        changed = json.loads(body) | data
        body = json.dumps({k: v for k, v in changed.items() if v is not DROP}).encode()
    return Record(hdrs, body, offset, encoded.topic, key=encoded.key)


def reference(event_cls: type[Event], raws: Sequence[Any]) -> Decoded[Any]:
    """What the fast decoders must give: every record through ``decode`` (pydantic)."""
    events, accepted, rejected = [], [], []
    for raw in raws:
        try:
            events.append(decode(raw.headers, raw.value, expected=event_cls))
        except ContractError as exc:
            rejected.append((raw, str(exc)))
            continue
        accepted.append(raw)
    return Decoded(Columns[event_cls].of(events), accepted, rejected)


def typed(value: Any) -> Any:
    """``value`` with the exact type of everything in it, to compare: ``1`` is not ``1.0``, a
    model is not a dict, ``-0.0`` is not ``0.0``, times keep their offset."""
    if isinstance(value, Columns):
        return {name: typed(getattr(value, name)) for name in value.names}
    if isinstance(value, BaseModel):
        return (type(value), typed(dict(value)))
    if isinstance(value, dict):
        return (type(value), {k: typed(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return (type(value), [typed(v) for v in value])
    if isinstance(value, datetime):
        return (datetime, value, value.utcoffset())
    if isinstance(value, float):
        return (float, value, math.copysign(1.0, value))
    return (type(value), value)


def assert_as_pydantic(
    event_cls: type[Event], raws: Sequence[Any], *, made_up: Sequence[str] = (), why: str = ""
) -> Decoded[Any]:
    """The batch decoder, with and without its batch path, gives what pydantic gives: the same
    accepted records, rejected ones with the same reasons, the same values of the same types.
    ``made_up``: columns pydantic fills itself (a missing id header), not compared."""
    expected = reference(event_cls, raws)
    want = typed(expected.columns)
    for name in made_up:
        del want[name]
    for decoder in (decode_batch, decode_by_record):
        got = decoder(event_cls, raws)
        where = f"{decoder.__name__} {why}"
        assert got.accepted == expected.accepted, where
        assert got.rejected == expected.rejected, where
        columns = typed(got.columns)
        for name in made_up:
            del columns[name]
        assert columns == want, where
    return expected


def prediction(pid: str = "p1", **overrides: Any) -> PredictionMade:
    """A valid PredictionMade of model ``churn`` (two features), fields overridable."""
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


def label(pid: str = "p1", value: int = 1, **overrides: Any) -> LabelObserved:
    """A valid LabelObserved of model ``churn`` for ``pid``, fields overridable."""
    fields = {"producer": "up", "model_name": "churn", "prediction_id": pid, "label": value}
    return LabelObserved(**(fields | overrides))


__all__ = [
    "DROP",
    "Record",
    "assert_as_pydantic",
    "label",
    "prediction",
    "record_of",
    "reference",
    "typed",
]
