"""The AsyncAPI documents in ``infra/asyncapi`` are generated, resolvable and true to the contracts.

If the first test fails after a wiring or contract change, regenerate with
``uv run python -m modelbus_platform.asyncapi infra/asyncapi`` and review the diff.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from modelbus_contracts import EVENTS_BY_TYPE, encode
from modelbus_contracts.events import ModelPromoted, TrainingRequested
from modelbus_platform.asyncapi import Receive, build_asyncapi, main, render
from modelbus_platform.asyncapi import receives as receives_of
from modelbus_platform.kit import load_specs

ROOT = Path(__file__).resolve().parents[3]
ASYNCAPI = ROOT / "infra" / "asyncapi"
GOLDEN = ROOT / "contracts" / "tests" / "golden"
ID = re.compile(r"^[A-Za-z0-9_\-]+$")
SERVICES = load_specs()
# consumed, produced by nobody here: upstream systems publish them (training.requested.v1 too,
# but the trainer also publishes it from its API and schedules)
UPSTREAM = {"scoring.requested.v1", "label.observed.v1"}


def committed(service: str) -> dict[str, Any]:
    return yaml.safe_load((ASYNCAPI / f"{service}.yaml").read_text(encoding="utf-8"))


def golden(event_type: str) -> dict[str, Any]:
    return json.loads((GOLDEN / f"{event_type}.json").read_text(encoding="utf-8"))


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def validator(document: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Validator:
    """A validator for a schema inside the document, so ``#/components/...`` refs resolve."""
    root = {**schema, "components": document["components"]}
    return jsonschema.Draft202012Validator(
        root, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def event_channels(document: dict[str, Any]) -> list[tuple[dict, dict]]:
    """(channel, message) for every channel whose message is an event (not a dead letter)."""
    out = []
    for channel in document["channels"].values():
        for ref in channel["messages"].values():
            message = resolve(document, ref["$ref"])
            if "x-modelbus-event-type" in message:
                out.append((channel, message))
    return out


def test_committed_documents_equal_generated():
    expected = render()
    files = {p.name: p.read_text(encoding="utf-8") for p in ASYNCAPI.glob("*.yaml")}
    assert sorted(files) == sorted(expected)
    stale = [name for name, text in expected.items() if files[name] != text]
    assert not stale, f"stale AsyncAPI documents (regenerate them): {stale}"


def test_cli_writes_the_same_files(tmp_path, capsys):
    assert main([str(tmp_path)]) == 0
    assert {p.name: p.read_text(encoding="utf-8") for p in tmp_path.iterdir()} == render()
    assert main([]) == 2
    assert "usage" in capsys.readouterr().err


def test_one_document_per_service_directory():
    services = {p.name for p in (ROOT / "services").iterdir() if (p / "pyproject.toml").exists()}
    assert set(SERVICES) == services


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_document_shape(service):
    doc = committed(service)
    assert doc["asyncapi"] == "3.0.0"
    assert doc["servers"]["kafka"]["protocol"] == "kafka"
    for section in ("channels", "operations"):
        assert all(ID.match(key) for key in doc[section]), section
    for ref in refs(doc):
        assert resolve(doc, ref) is not None, ref
    for op in doc["operations"].values():
        assert op["action"] in ("send", "receive")
        for message_ref in op["messages"]:
            assert message_ref["$ref"].startswith(op["channel"]["$ref"] + "/messages/")
            message = resolve(doc, resolve(doc, message_ref["$ref"])["$ref"])
            assert {"payload", "headers", "contentType"} <= set(message)


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_channels_are_the_topics_of_the_wiring(service):
    spec, doc = SERVICES[service], committed(service)
    addresses = {channel["address"] for channel in doc["channels"].values()}
    events = {cls.topic for cls in spec.publishes} | {s.event.topic for s in spec.subscriptions}
    dead_letters = {s.event.topic + ".dlq" for s in spec.subscriptions}
    assert addresses == events | dead_letters
    for channel in doc["channels"].values():
        assert channel["bindings"]["kafka"]["topic"] == channel["address"]


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_operations_follow_the_wiring(service):
    spec, doc = SERVICES[service], committed(service)
    sends = {
        resolve(doc, op["channel"]["$ref"])["address"]
        for op in doc["operations"].values()
        if op["action"] == "send"
    }
    receives = {
        resolve(doc, op["channel"]["$ref"])["address"]: op
        for op in doc["operations"].values()
        if op["action"] == "receive"
    }
    assert {cls.topic for cls in spec.publishes} <= sends
    assert set(receives) == {s.event.topic for s in spec.subscriptions}
    for sub in receives_of(spec):
        group = receives[sub.event.topic]["bindings"]["kafka"]["groupId"]
        instance_group = sub.group.replace("{instance}", "scorer-7c9f6d5b8-x2kqp")
        assert jsonschema.Draft202012Validator(group).is_valid(instance_group)
        assert not jsonschema.Draft202012Validator(group).is_valid("some-other-group")


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_channel_message_validates_its_golden_example(service):
    doc = committed(service)
    checked = 0
    for channel, message in event_channels(doc):
        event_type = message["x-modelbus-event-type"]
        assert channel["address"] == event_type
        event = EVENTS_BY_TYPE[event_type].model_validate(golden(event_type))
        record = encode(event)
        validator(doc, message["payload"]).validate(json.loads(record.value))
        validator(doc, message["headers"]).validate(record.headers)
        key_schema = message["bindings"]["kafka"]["key"]
        validator(doc, key_schema).validate(record.key.decode())
        checked += 1
    spec = SERVICES[service]
    topics = {cls.topic for cls in spec.publishes} | {s.event.topic for s in spec.subscriptions}
    assert checked == len(topics)  # one channel per topic, sent and received alike


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_message_schemas_reject_bad_payloads(service):
    doc = committed(service)
    for _, message in event_channels(doc):
        event_type = message["x-modelbus-event-type"]
        data = json.loads(
            encode(EVENTS_BY_TYPE[event_type].model_validate(golden(event_type))).value
        )
        payload = validator(doc, message["payload"])
        assert not payload.is_valid({**data, "surprise": True})
        assert not payload.is_valid({k: v for k, v in data.items() if k != "model_name"})
        headers = validator(doc, message["headers"])
        assert not headers.is_valid({"ce_specversion": "1.0", "ce_type": "other.v1"})


def test_every_consumed_event_has_a_producer_or_comes_from_upstream():
    published = {cls.event_type for spec in SERVICES.values() for cls in spec.publishes}
    consumed = {s.event.event_type for spec in SERVICES.values() for s in spec.subscriptions}
    assert consumed - published == UPSTREAM


def test_build_asyncapi_for_an_ad_hoc_service():
    doc = build_asyncapi(
        "demo",
        publishes=[TrainingRequested],
        subscribes=[Receive(ModelPromoted, "demo-{instance}")],
        description="a demo",
        bootstrap="broker:9093",
    )
    assert doc["servers"]["kafka"]["host"] == "broker:9093"
    assert doc["operations"]["sendTrainingRequested"]["action"] == "send"
    group = doc["operations"]["receiveModelPromoted"]["bindings"]["kafka"]["groupId"]
    assert group["pattern"] == "^demo-.+$"
    assert {"ModelPromoted", "ModelPromotedHeaders", "ArtifactRef"} <= set(
        doc["components"]["schemas"]
    )
    assert all(resolve(doc, ref) for ref in refs(doc))
    assert "model.promoted.v1.dlq" in {c["address"] for c in doc["channels"].values()}
