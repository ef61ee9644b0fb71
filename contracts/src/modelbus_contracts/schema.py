"""Published JSON Schemas of the event contracts, generated from the pydantic models.

Three views of one event:

- ``event_schema``: the whole event (envelope + data), the shape of the golden examples;
- ``data_schema``: the Kafka message value in binary content mode (everything but the envelope);
- ``headers_schema``: the CloudEvents Kafka headers that carry the envelope.

``python -m modelbus_contracts.schema OUTDIR`` writes ``<event_type>.schema.json`` for every
event plus ``cloudevents-headers.schema.json``; the committed copies in ``contracts/schemas`` are
checked against this module by the contract tests, so they never drift from the code.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic.json_schema import DEFAULT_REF_TEMPLATE

from .cloudevents import _ATTRIBUTES, JSON, SPECVERSION
from .envelope import ENVELOPE_FIELDS, Event
from .events import ALL_EVENTS

DIALECT = "https://json-schema.org/draft/2020-12/schema"
HEADERS_FILE = "cloudevents-headers.schema.json"

_ATTRIBUTE_DOCS = {
    "event_id": "unique event id; consumers deduplicate on it (idempotency key)",
    "occurred_at": "when the event happened (RFC 3339, UTC)",
    "producer": "the service (or upstream system) that published the event",
    "correlation_id": "the chain this event belongs to (a training run, an incident, ...)",
    "causation_id": "event_id of the event that caused this one; absent at the start of a chain",
}


def schema_file(event_cls: type[Event]) -> str:
    return f"{event_cls.event_type}.schema.json"


def event_schema(event_cls: type[Event], ref_template: str = DEFAULT_REF_TEMPLATE) -> dict:
    """The whole event, envelope and data, as one JSON object."""
    schema = event_cls.model_json_schema(ref_template=ref_template)
    schema["x-modelbus-event-type"] = event_cls.event_type
    schema["x-modelbus-topic"] = event_cls.topic
    schema["x-modelbus-key"] = "model_name"
    return schema


def data_schema(event_cls: type[Event], ref_template: str = DEFAULT_REF_TEMPLATE) -> dict:
    """The Kafka message value in binary content mode: the event without its envelope."""
    schema = copy.deepcopy(event_schema(event_cls, ref_template))
    for field in ENVELOPE_FIELDS:
        schema["properties"].pop(field, None)
    schema["required"] = [f for f in schema.get("required", []) if f not in ENVELOPE_FIELDS]
    if not schema["required"]:
        del schema["required"]
    return schema


def _envelope_property(field: str) -> dict[str, Any]:
    prop = Event.model_json_schema()["properties"][field]
    prop = next((p for p in prop.get("anyOf", []) if p.get("type") != "null"), prop)
    out = {k: v for k, v in prop.items() if k in ("type", "format")}
    out["x-modelbus-field"] = field
    out["description"] = _ATTRIBUTE_DOCS[field]
    return out


def headers_schema(event_type: str | None = None) -> dict:
    """CloudEvents 1.0 Kafka binary-mode headers: how the envelope travels.

    Required are the attributes CloudEvents itself requires; modelbus producers always send the
    rest too (except ``ce_causationid`` at the start of a chain).
    """
    types = [cls.event_type for cls in ALL_EVENTS]
    type_prop: dict[str, Any] = {"type": "string", "description": "the versioned event type"}
    if event_type is None:
        type_prop["enum"] = types
    else:
        type_prop["const"] = event_type
    model_name = dict(Event.model_json_schema()["properties"]["model_name"])
    model_name.pop("title", None)
    properties: dict[str, Any] = {
        "ce_specversion": {"type": "string", "const": SPECVERSION},
        "ce_type": type_prop,
        **{f"ce_{attr}": _envelope_property(field) for field, attr in _ATTRIBUTES.items()},
        "ce_subject": {
            **model_name,
            "x-modelbus-field": "model_name",
            "description": "the model the event is about; also the Kafka message key",
        },
        "content-type": {"type": "string", "const": JSON},
    }
    return {
        "title": "CloudEvents Kafka headers" + (f" for {event_type}" if event_type else ""),
        "description": (
            "CloudEvents 1.0 Kafka protocol binding, binary content mode: the envelope travels "
            "in ce_* headers, the event data is the JSON message value, the key is the model "
            "name. Structured mode (content-type application/cloudevents+json, attributes and "
            "data in one JSON value) is accepted on input too."
        ),
        "type": "object",
        "properties": properties,
        "required": ["ce_specversion", "ce_type", "ce_id", "ce_source"],
        "additionalProperties": {"type": "string"},
    }


def _dump(schema: dict) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def render() -> dict[str, str]:
    """Every published schema file: name -> exact text."""
    files: dict[str, str] = {}
    for cls in ALL_EVENTS:
        schema = {"$schema": DIALECT, "$id": f"urn:modelbus:event:{cls.event_type}"}
        files[schema_file(cls)] = _dump({**schema, **event_schema(cls)})
    headers = {"$schema": DIALECT, "$id": "urn:modelbus:cloudevents-headers", **headers_schema()}
    files[HEADERS_FILE] = _dump(headers)
    return files


def write_files(outdir: Path, files: dict[str, str]) -> list[Path]:
    """Write generated documents (file name -> text) into ``outdir``."""
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        path = outdir / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def generator_main(
    module: str, render_files: Callable[[], dict[str, str]], argv: list[str] | None
) -> int:
    """``python -m <module> OUTDIR``: regenerate the committed documents."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(f"usage: python -m {module} OUTDIR", file=sys.stderr)
        return 2
    for path in write_files(Path(args[0]), render_files()):
        print(path)
    return 0


def write(outdir: Path) -> list[Path]:
    return write_files(outdir, render())


def main(argv: list[str] | None = None) -> int:
    return generator_main("modelbus_contracts.schema", render, argv)


if __name__ == "__main__":
    raise SystemExit(main())
