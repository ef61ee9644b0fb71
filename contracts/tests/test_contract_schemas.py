"""The published JSON Schemas in ``contracts/schemas`` are true: generated, and obeyed.

If this fails after a contract change, regenerate with
``uv run python -m modelbus_contracts.schema contracts/schemas`` and review the diff.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from modelbus_contracts import ALL_EVENTS, EVENTS_BY_TYPE, encode
from modelbus_contracts.schema import (
    HEADERS_FILE,
    data_schema,
    headers_schema,
    main,
    render,
    schema_file,
)

SCHEMAS = Path(__file__).parents[1] / "schemas"
GOLDEN = Path(__file__).parent / "golden"
TYPES = sorted(EVENTS_BY_TYPE)


def golden(event_type: str) -> dict:
    return json.loads((GOLDEN / f"{event_type}.json").read_text(encoding="utf-8"))


def validator(schema: dict) -> jsonschema.Draft202012Validator:
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def test_committed_schemas_equal_generated():
    expected = render()
    committed = {p.name: p.read_text(encoding="utf-8") for p in SCHEMAS.glob("*.json")}
    assert sorted(committed) == sorted(expected), "schema files added or missing"
    stale = [name for name, text in expected.items() if committed[name] != text]
    assert not stale, f"stale schemas (regenerate them): {stale}"


def test_one_schema_per_event_plus_headers():
    assert set(render()) == {schema_file(cls) for cls in ALL_EVENTS} | {HEADERS_FILE}


def test_cli_writes_the_same_files(tmp_path, capsys):
    assert main([str(tmp_path)]) == 0
    written = {p.name: p.read_text(encoding="utf-8") for p in tmp_path.iterdir()}
    assert written == render()
    assert main([]) == 2
    assert "usage" in capsys.readouterr().err


@pytest.mark.parametrize("event_type", TYPES)
def test_golden_validates_against_committed_schema(event_type):
    schema = json.loads((SCHEMAS / f"{event_type}.schema.json").read_text(encoding="utf-8"))
    assert schema["x-modelbus-topic"] == event_type
    validator(schema).validate(golden(event_type))


@pytest.mark.parametrize("event_type", TYPES)
def test_committed_schema_rejects_unknown_fields_and_wrong_types(event_type):
    schema = json.loads((SCHEMAS / f"{event_type}.schema.json").read_text(encoding="utf-8"))
    check = validator(schema)
    assert not check.is_valid({**golden(event_type), "surprise": 1})
    assert not check.is_valid({**golden(event_type), "model_name": ""})
    assert not check.is_valid({**golden(event_type), "event_id": "not-a-uuid"})


@pytest.mark.parametrize("event_type", TYPES)
def test_wire_message_validates_against_data_and_headers_schemas(event_type):
    cls = EVENTS_BY_TYPE[event_type]
    record = encode(cls.model_validate(golden(event_type)))
    validator(data_schema(cls)).validate(json.loads(record.value))
    validator(headers_schema(event_type)).validate(record.headers)
    validator(headers_schema()).validate(record.headers)


def test_headers_schema_rejects_a_foreign_type_and_missing_id():
    record = encode(EVENTS_BY_TYPE["label.observed.v1"].model_validate(golden("label.observed.v1")))
    check = validator(headers_schema("label.observed.v1"))
    assert not check.is_valid({**record.headers, "ce_type": "model.promoted.v1"})
    assert not check.is_valid({k: v for k, v in record.headers.items() if k != "ce_id"})
    assert not validator(headers_schema()).is_valid({**record.headers, "ce_type": "nope.v1"})


def test_data_schema_has_no_envelope():
    for cls in ALL_EVENTS:
        props = data_schema(cls)["properties"]
        assert "model_name" in props
        assert not {"event_id", "occurred_at", "producer", "correlation_id"} & set(props)
