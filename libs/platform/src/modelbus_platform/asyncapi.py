"""AsyncAPI 3.0 documents for the services: which topics each one sends and receives, and how.

``build_asyncapi(service, publishes=..., subscribes=...)`` turns a service's event wiring into an
AsyncAPI 3.0 document (a plain dict): one channel per topic (the topic is the versioned event
type), each message's payload is the event's data as JSON Schema (from the pydantic model), its
headers are the CloudEvents Kafka headers, and the Kafka bindings give the consumer group and the
message key (the model name). Every subscription also gets its ``<topic>.dlq`` channel, because
the bus dead-letters what a handler cannot process.

``document_for(spec)`` makes the document of a declared service (``kit.ServiceSpec``: its
publications and subscriptions are the ones the running service has, since the bus refuses to
publish anything else); ``python -m modelbus_platform.asyncapi OUTDIR`` writes
``OUTDIR/<service>.yaml`` for every installed service (entry point ``modelbus.services``; the
committed copies live in ``infra/asyncapi``).
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NamedTuple

from modelbus_contracts import Event
from modelbus_contracts.schema import data_schema, generator_main, headers_schema, write_files

from .bus import (
    DLQ_AT,
    DLQ_ATTEMPTS,
    DLQ_GROUP,
    DLQ_OFFSET,
    DLQ_PARTITION,
    DLQ_REASON,
    DLQ_SERVICE,
    DLQ_SOURCE_TOPIC,
    dlq_topic,
)
from .kit import INSTANCE_PLACEHOLDER, ServiceSpec, load_specs
from .settings import ServiceSettings

ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"
INSTANCE = INSTANCE_PLACEHOLDER
REF_TEMPLATE = "#/components/schemas/{model}"
DEAD_LETTER = "DeadLetter"


class Receive(NamedTuple):
    """``event`` consumed in consumer ``group``; ``{instance}`` in the group means per replica."""

    event: type[Event]
    group: str


def receives(spec: ServiceSpec) -> list[Receive]:
    """What a service consumes, with its groups as the document shows them."""
    return [Receive(s.event, s.documented_group(spec.settings)) for s in spec.subscriptions]


# --- building blocks ----------------------------------------------------------------------------


def channel_id(topic: str) -> str:
    """AsyncAPI ids allow ``[A-Za-z0-9_-]``; topics also use dots."""
    return topic.replace(".", "_")


def _summary(cls: type) -> str:
    doc = (cls.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else f"{cls.__name__} events, keyed by model name."


def _kafka(**binding: Any) -> dict[str, Any]:
    return {"kafka": {**binding, "bindingVersion": KAFKA_BINDING_VERSION}}


def _group_schema(group: str) -> dict[str, Any]:
    if INSTANCE not in group:
        return {"type": "string", "enum": [group]}
    prefix, _, suffix = group.partition(INSTANCE)
    return {
        "type": "string",
        "pattern": f"^{prefix}.+{suffix}$",
        "description": f"{group}: one group per replica, so every replica sees every event",
    }


def _event_message(event_cls: type[Event], schemas: dict[str, Any]) -> dict[str, Any]:
    payload = data_schema(event_cls, ref_template=REF_TEMPLATE)
    for name, definition in payload.pop("$defs", {}).items():
        if schemas.setdefault(name, definition) != definition:
            raise ValueError(f"two different schemas named {name}")
    name = event_cls.__name__
    schemas[name] = payload
    schemas[f"{name}Headers"] = headers_schema(event_cls.event_type)
    key = headers_schema()["properties"]["ce_subject"]
    return {
        "name": event_cls.event_type,
        "title": name,
        "summary": _summary(event_cls),
        "contentType": "application/json",
        "headers": {"$ref": f"#/components/schemas/{name}Headers"},
        "payload": {"$ref": f"#/components/schemas/{name}"},
        "correlationId": {
            "description": "the chain (training run, incident) this event belongs to",
            "location": "$message.header#/ce_correlationid",
        },
        "bindings": _kafka(key={**key, "description": "the model name: ordering is per model"}),
        "x-modelbus-event-type": event_cls.event_type,
    }


def _dead_letter_message() -> dict[str, Any]:
    reasons = {
        DLQ_REASON: "why: contract violation or the handler's last error",
        DLQ_SOURCE_TOPIC: "the topic the message came from",
        DLQ_PARTITION: "its partition",
        DLQ_OFFSET: "its offset",
        DLQ_GROUP: "the consumer group that gave up",
        DLQ_SERVICE: "the service that gave up",
        DLQ_ATTEMPTS: "handler attempts made (0: rejected by the contract)",
        DLQ_AT: "when it was dead-lettered (RFC 3339)",
    }
    return {
        "name": DEAD_LETTER,
        "title": "Dead letter",
        "summary": "A message a consumer could not process: original key, value and headers.",
        "contentType": "application/octet-stream",
        "headers": {
            "type": "object",
            "properties": {k: {"type": "string", "description": v} for k, v in reasons.items()},
            "required": list(reasons),
            "additionalProperties": {"type": "string"},
        },
        "payload": {"description": "the original message value, unchanged (may be invalid)"},
    }


def _channel(topic: str, message: str, description: str, partitions: int) -> dict[str, Any]:
    return {
        "address": topic,
        "description": description,
        "servers": [{"$ref": "#/servers/kafka"}],
        "messages": {message: {"$ref": f"#/components/messages/{message}"}},
        "bindings": _kafka(topic=topic, partitions=partitions),
    }


def _operation(action: str, topic: str, message: str, summary: str, **extra: Any) -> dict:
    cid = channel_id(topic)
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{cid}"},
        "messages": [{"$ref": f"#/channels/{cid}/messages/{message}"}],
        "summary": summary,
        **extra,
    }


def _package_version() -> str:
    try:
        return version("modelbus-platform")
    except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
        return "0.0.0"


# --- the document -------------------------------------------------------------------------------


def build_asyncapi(
    service: str,
    *,
    publishes: Iterable[type[Event]],
    subscribes: Iterable[Receive],
    description: str = "",
    bootstrap: str = "kafka:9092",
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of one service's events (publish = send, subscribe = receive)."""
    publishes, subscribes = tuple(publishes), tuple(subscribes)
    partitions = ServiceSettings.model_fields["topic_partitions"].default
    schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}

    def add_event_channel(cls: type[Event]) -> None:
        messages.setdefault(cls.__name__, _event_message(cls, schemas))
        channels.setdefault(
            channel_id(cls.topic),
            _channel(cls.topic, cls.__name__, _summary(cls), partitions),
        )

    for cls in publishes:
        add_event_channel(cls)
        operations[f"send{cls.__name__}"] = _operation(
            "send", cls.topic, cls.__name__, f"{service} publishes {cls.event_type}"
        )
    for sub in subscribes:
        cls, topic = sub.event, sub.event.topic
        add_event_channel(cls)
        operations[f"receive{cls.__name__}"] = _operation(
            "receive",
            topic,
            cls.__name__,
            f"{service} consumes {cls.event_type} in consumer group {sub.group}",
            bindings=_kafka(groupId=_group_schema(sub.group)),
            **{"x-modelbus-group": sub.group},
        )
        messages.setdefault(DEAD_LETTER, _dead_letter_message())
        dlq = dlq_topic(topic)
        channels[channel_id(dlq)] = _channel(
            dlq, DEAD_LETTER, f"dead letters of {topic}", partitions
        )
        operations[f"deadLetter{cls.__name__}"] = _operation(
            "send", dlq, DEAD_LETTER, f"{service} dead-letters {topic} it cannot process"
        )

    return {
        "asyncapi": ASYNCAPI_VERSION,
        "id": f"urn:modelbus:service:{service}",
        "info": {
            "title": f"modelbus {service}",
            "version": _package_version(),
            "description": (
                f"{description}\n\nEvents are CloudEvents 1.0 in Kafka binary content mode: "
                "envelope in ce_* headers, data as the JSON value, key = model name. One topic "
                "per versioned event type."
            ).strip(),
        },
        "defaultContentType": "application/json",
        "servers": {
            "kafka": {
                "host": bootstrap,
                "protocol": "kafka",
                "description": "the broker (MODELBUS_KAFKA_BOOTSTRAP)",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }


def document_for(spec: ServiceSpec) -> dict[str, Any]:
    """The document of a declared service: what its spec publishes and subscribes to."""
    return build_asyncapi(
        spec.name,
        publishes=spec.publishes,
        subscribes=receives(spec),
        description=spec.description,
    )


HEADER = "# Generated by `python -m modelbus_platform.asyncapi infra/asyncapi`; do not edit.\n"


def to_yaml(document: dict[str, Any]) -> str:
    import yaml  # PyYAML comes with uvicorn[standard]; only this dev-facing export needs it

    return HEADER + yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)


def render() -> dict[str, str]:
    """Every installed service's document (``kit.load_specs``): file name -> exact YAML."""
    return {f"{name}.yaml": to_yaml(document_for(spec)) for name, spec in load_specs().items()}


def write(outdir: Path) -> list[Path]:
    return write_files(outdir, render())


def main(argv: list[str] | None = None) -> int:
    return generator_main("modelbus_platform.asyncapi", render, argv)


if __name__ == "__main__":
    raise SystemExit(main())
