"""Map modelbus events onto CloudEvents Kafka messages and back.

Publishing uses the binary content mode: envelope in ``ce_*`` headers, the event's data as the
JSON value, the model name as the key. Decoding accepts binary mode and structured mode
(``content-type: application/cloudevents+json``), so any upstream system that speaks CloudEvents
can publish into modelbus without a modelbus library.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from .envelope import Event
from .events import EVENTS_BY_TYPE

SPECVERSION = "1.0"
JSON = "application/json"
STRUCTURED = "application/cloudevents+json"

# envelope field -> CloudEvents attribute (extension names are lowercase alphanumerics)
_ATTRIBUTES = {
    "event_id": "id",
    "occurred_at": "time",
    "producer": "source",
    "correlation_id": "correlationid",
    "causation_id": "causationid",
}


class ContractError(ValueError):
    """A message that does not satisfy the event contract; the reason is human readable."""


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    topic: str
    key: bytes
    value: bytes
    headers: dict[str, str]


def encode(event: Event) -> KafkaRecord:
    envelope = event.model_dump(mode="json", include=set(_ATTRIBUTES))
    headers = {
        "ce_specversion": SPECVERSION,
        "ce_type": event.event_type,
        "ce_subject": event.model_name,
        "content-type": JSON,
    }
    for field, attribute in _ATTRIBUTES.items():
        if envelope.get(field) is not None:
            headers[f"ce_{attribute}"] = str(envelope[field])
    value = json.dumps(event.data(), separators=(",", ":"), allow_nan=False).encode()
    return KafkaRecord(event.topic, event.key, value, headers)


def _text_headers(headers: Mapping[str, Any] | list[tuple[str, Any]] | None) -> dict[str, str]:
    items = headers.items() if isinstance(headers, Mapping) else (headers or [])
    out: dict[str, str] = {}
    for name, raw in items:
        out[name.lower()] = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return out


def _parse_json(value: bytes) -> Any:
    # orjson: ~5x faster than json on the telemetry path, and it refuses NaN/Infinity literals
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ContractError(f"value is not valid JSON: {exc}") from exc


def decode(
    headers: Mapping[str, Any] | list[tuple[str, Any]] | None,
    value: bytes,
    expected: type[Event] | None = None,
) -> Event:
    """Decode a Kafka message into its event; raise ContractError with the reason if it is bad."""
    hdrs = _text_headers(headers)
    if hdrs.get("content-type", "").startswith(STRUCTURED):
        body = _parse_json(value)
        if not isinstance(body, dict):
            raise ContractError("structured CloudEvent must be a JSON object")
        attributes = {k: v for k, v in body.items() if k != "data"}
        data = body.get("data")
    else:
        attributes = {k[3:]: v for k, v in hdrs.items() if k.startswith("ce_")}
        data = _parse_json(value)
    if not attributes.get("type"):
        raise ContractError("missing CloudEvents type (header ce_type)")
    if attributes.get("specversion", SPECVERSION) != SPECVERSION:
        raise ContractError(f"unsupported CloudEvents specversion {attributes.get('specversion')}")
    event_cls = EVENTS_BY_TYPE.get(attributes["type"])
    if event_cls is None:
        raise ContractError(f"unknown event type {attributes['type']!r}")
    if expected is not None and event_cls is not expected:
        raise ContractError(f"expected {expected.event_type}, got {attributes['type']}")
    if not isinstance(data, dict):
        raise ContractError("event data must be a JSON object")
    envelope = {
        field: attributes[attribute]
        for field, attribute in _ATTRIBUTES.items()
        if attributes.get(attribute) not in (None, "")
    }
    if "model_name" not in data and attributes.get("subject"):
        data = {**data, "model_name": attributes["subject"]}
    try:
        return event_cls.from_parts(envelope, data)
    except ValidationError as exc:
        raise ContractError(summarise(exc)) from exc


def summarise(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:10]:
        where = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{where}: {err['msg']}")
    return "invalid event: " + "; ".join(parts)
