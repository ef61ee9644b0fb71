"""Contract tests: every event's golden example survives every wire format unchanged.

The golden files in ``golden/`` are fixed, realistic examples (one per event type). If a change
to ``modelbus_contracts`` makes one of them invalid or changes how it serialises, that change is
breaking for someone on the bus: it needs a new event version, not an edited golden file.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from modelbus_contracts import (
    ALL_EVENTS,
    EVENTS_BY_TYPE,
    ContractError,
    Event,
    decode,
    encode,
)
from modelbus_contracts.events import (
    DataQualityAlert,
    DriftDetected,
    FeatureStats,
    LabelObserved,
    ModelPromoted,
    ModelRegistered,
    ModelTrained,
    PredictionMade,
    ScoringFailed,
    ScoringRequested,
    TrainingRequested,
)

GOLDEN = Path(__file__).parent / "golden"
TYPES = sorted(EVENTS_BY_TYPE)


def golden(event_type: str) -> dict[str, Any]:
    return json.loads((GOLDEN / f"{event_type}.json").read_text(encoding="utf-8"))


def golden_event(event_type: str) -> Event:
    return EVENTS_BY_TYPE[event_type].model_validate(golden(event_type))


def structured(event: Event) -> dict[str, Any]:
    """The same event as a structured-mode CloudEvent (what a non-modelbus producer sends)."""
    body = {
        "specversion": "1.0",
        "type": event.event_type,
        "id": str(event.event_id),
        "time": event.occurred_at.isoformat(),
        "source": event.producer,
        "subject": event.model_name,
        "correlationid": str(event.correlation_id),
        "datacontenttype": "application/json",
        "data": event.data(),
    }
    if event.causation_id is not None:
        body["causationid"] = str(event.causation_id)
    return body


# --- the golden set itself ----------------------------------------------------------------------


def test_every_event_type_has_exactly_one_golden_file():
    files = {p.name.removesuffix(".json") for p in GOLDEN.glob("*.json")}
    assert files == set(EVENTS_BY_TYPE)


@pytest.mark.parametrize("event_type", TYPES)
def test_golden_is_valid_and_canonical(event_type):
    raw = golden(event_type)
    event = EVENTS_BY_TYPE[event_type].model_validate(raw)
    assert event.model_dump(mode="json") == raw


@pytest.mark.parametrize("event_type", TYPES)
def test_golden_uses_fixed_ids_and_times(event_type):
    raw = golden(event_type)
    assert uuid.UUID(raw["event_id"]) and uuid.UUID(raw["correlation_id"])
    assert raw["occurred_at"].endswith("Z")
    assert raw["producer"] != "unknown"


# --- wire formats -------------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", TYPES)
def test_binary_mode_round_trip(event_type):
    event = golden_event(event_type)
    record = encode(event)
    assert record.topic == event_type
    assert record.key == event.model_name.encode()
    assert record.headers["ce_type"] == event_type
    assert record.headers["ce_id"] == str(event.event_id)
    assert record.headers["ce_correlationid"] == str(event.correlation_id)
    assert "event_id" not in json.loads(record.value)
    assert decode(record.headers, record.value, expected=type(event)) == event


@pytest.mark.parametrize("event_type", TYPES)
def test_binary_mode_round_trip_with_kafka_byte_headers(event_type):
    event = golden_event(event_type)
    record = encode(event)
    kafka_headers = [(name, value.encode()) for name, value in record.headers.items()]
    assert decode(kafka_headers, record.value) == event


@pytest.mark.parametrize("event_type", TYPES)
def test_json_round_trip(event_type):
    event = golden_event(event_type)
    cls = type(event)
    assert cls.model_validate_json(event.model_dump_json()) == event
    assert cls.model_validate(json.loads(json.dumps(event.model_dump(mode="json")))) == event


@pytest.mark.parametrize("event_type", TYPES)
def test_structured_mode_decode(event_type):
    event = golden_event(event_type)
    value = json.dumps(structured(event)).encode()
    headers = {"content-type": "application/cloudevents+json; charset=utf-8"}
    assert decode(headers, value, expected=type(event)) == event


def test_binary_mode_takes_model_name_from_subject_when_data_lacks_it():
    event = golden_event("label.observed.v1")
    record = encode(event)
    data = {k: v for k, v in json.loads(record.value).items() if k != "model_name"}
    decoded = decode(record.headers, json.dumps(data).encode())
    assert decoded == event


# --- immutability and strictness ----------------------------------------------------------------


@pytest.mark.parametrize("event_type", TYPES)
def test_frozen(event_type):
    event = golden_event(event_type)
    with pytest.raises(ValidationError, match="frozen"):
        event.model_name = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        event.producer = "someone-else"  # type: ignore[misc]


@pytest.mark.parametrize("event_type", TYPES)
def test_unknown_field_rejected(event_type):
    raw = {**golden(event_type), "surprise": 1}
    with pytest.raises(ValidationError, match="surprise"):
        EVENTS_BY_TYPE[event_type].model_validate(raw)


@pytest.mark.parametrize("event_type", TYPES)
def test_unknown_data_field_on_the_wire_is_a_contract_error(event_type):
    record = encode(golden_event(event_type))
    value = json.dumps({**json.loads(record.value), "surprise": 1}).encode()
    with pytest.raises(ContractError, match="surprise"):
        decode(record.headers, value)


def test_nested_unknown_field_rejected():
    raw = golden("model.trained.v1")
    raw["artifact"] = {**raw["artifact"], "signed_by": "eve"}
    with pytest.raises(ValidationError, match="signed_by"):
        ModelTrained.model_validate(raw)


# --- NaN and infinity ---------------------------------------------------------------------------

NON_FINITE = [math.nan, math.inf, -math.inf]


def with_(event_type: str, **changes: Any) -> dict[str, Any]:
    return {**golden(event_type), **changes}


@pytest.mark.parametrize("bad", NON_FINITE, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize(
    ("event_type", "field"),
    [
        ("prediction.made.v1", "score"),
        ("prediction.made.v1", "latency_ms"),
        ("model.trained.v1", "training_seconds"),
        ("drift.detected.v1", "statistic"),
        ("drift.detected.v1", "current_value"),
    ],
)
def test_non_finite_float_fields_rejected(event_type, field, bad):
    with pytest.raises(ValidationError):
        EVENTS_BY_TYPE[event_type].model_validate(with_(event_type, **{field: bad}))


@pytest.mark.parametrize("bad", NON_FINITE, ids=["nan", "inf", "-inf"])
def test_non_finite_rejected_inside_free_form_dicts(bad):
    params = {"l2": 0.01, "grid": {"lr": [0.1, bad]}}
    with pytest.raises(ValidationError, match="NaN and infinity"):
        TrainingRequested.model_validate(with_("training.requested.v1", params=params))
    with pytest.raises(ValidationError):
        ScoringRequested.model_validate(with_("scoring.requested.v1", features={"x": bad}))
    with pytest.raises(ValidationError):
        PredictionMade.model_validate(with_("prediction.made.v1", features={"x": 1.0, "y": bad}))
    with pytest.raises(ValidationError):
        ModelRegistered.model_validate(with_("model.registered.v1", metrics={"auc": bad}))
    with pytest.raises(ValidationError, match="NaN and infinity"):
        DataQualityAlert.model_validate(with_("data_quality.alert.v1", examples=[{"x": bad}]))


@pytest.mark.parametrize("key", ["ep\x00ochs", "a\nb", "\x7f", "\x9f"])
def test_a_control_character_in_a_params_key_is_refused_at_any_depth(key):
    for params in ({key: 1}, {"grid": {key: 1}}, {"grid": [{key: 1}]}):
        with pytest.raises(ValidationError, match="a key holds a control character"):
            TrainingRequested.model_validate(with_("training.requested.v1", params=params))
    ok = {"naïve café": 1, "grid": [{"lr": 0.1}]}
    assert TrainingRequested.model_validate(with_("training.requested.v1", params=ok)).params == ok


@pytest.mark.parametrize("bad", NON_FINITE, ids=["nan", "inf", "-inf"])
def test_non_finite_rejected_in_nested_models(bad):
    raw = golden("model.trained.v1")
    raw["lineage"] = {**raw["lineage"], "params": {"l2": bad}}
    with pytest.raises(ValidationError):
        ModelTrained.model_validate(raw)
    with pytest.raises(ValidationError):
        FeatureStats(count=1, mean=bad, std=0.0, min=0.0, max=1.0)


def test_nan_literal_on_the_wire_is_a_contract_error():
    record = encode(golden_event("scoring.requested.v1"))
    value = record.value.replace(b'"support_calls":4.0', b'"support_calls":NaN')
    assert value != record.value
    with pytest.raises(ContractError, match="not valid JSON"):
        decode(record.headers, value)


# --- contract errors carry a clear reason -------------------------------------------------------


def test_missing_type_is_a_contract_error():
    record = encode(golden_event("label.observed.v1"))
    headers = {k: v for k, v in record.headers.items() if k != "ce_type"}
    with pytest.raises(ContractError, match="missing CloudEvents type"):
        decode(headers, record.value)


def test_unknown_type_is_a_contract_error():
    record = encode(golden_event("label.observed.v1"))
    with pytest.raises(ContractError, match=r"unknown event type 'label\.observed\.v9'"):
        decode({**record.headers, "ce_type": "label.observed.v9"}, record.value)


def test_wrong_expected_class_is_a_contract_error():
    record = encode(golden_event("label.observed.v1"))
    with pytest.raises(
        ContractError, match=r"expected model\.promoted\.v1, got label\.observed\.v1"
    ):
        decode(record.headers, record.value, expected=ModelPromoted)


@pytest.mark.parametrize("value", [b"not json", b'{"prediction_id": ', b"\xff\xfe"])
def test_non_json_value_is_a_contract_error(value):
    record = encode(golden_event("label.observed.v1"))
    with pytest.raises(ContractError, match="not valid JSON"):
        decode(record.headers, value)


def test_non_object_data_is_a_contract_error():
    record = encode(golden_event("label.observed.v1"))
    with pytest.raises(ContractError, match="must be a JSON object"):
        decode(record.headers, b"[1, 2]")


def test_invalid_data_names_the_field():
    record = encode(golden_event("label.observed.v1"))
    value = json.dumps({**json.loads(record.value), "label": [7]}).encode()
    with pytest.raises(ContractError, match=r"invalid event: label\.int: "):
        decode(record.headers, value)


def test_unsupported_specversion_is_a_contract_error():
    record = encode(golden_event("label.observed.v1"))
    with pytest.raises(ContractError, match="specversion"):
        decode({**record.headers, "ce_specversion": "0.3"}, record.value)


def test_structured_mode_non_object_is_a_contract_error():
    headers = {"content-type": "application/cloudevents+json"}
    with pytest.raises(ContractError, match="JSON object"):
        decode(headers, b'"label.observed.v1"')


def test_contract_error_is_a_value_error():
    assert issubclass(ContractError, ValueError)


def test_scoring_failed_from_before_served_by_still_decodes():
    """``version`` and ``served_by`` were added to v1 with defaults: old producers stay valid."""
    raw = {k: v for k, v in golden("scoring.failed.v1").items() if v is not None}
    old = ScoringFailed.model_validate(raw)
    assert (old.version, old.served_by) == (None, None)
    shadow = ScoringFailed.model_validate({**raw, "version": 2, "served_by": "shadow"})
    record = encode(shadow)
    assert decode(record.headers, record.value, expected=ScoringFailed) == shadow
    with pytest.raises(ValidationError):
        ScoringFailed.model_validate({**raw, "served_by": "fallback"})


# --- causation chains ---------------------------------------------------------------------------


def test_caused_keeps_correlation_and_sets_causation():
    trained = golden_event("model.trained.v1")
    assert isinstance(trained, ModelTrained)
    registered = trained.caused(
        ModelRegistered,
        producer="registry",
        model_name=trained.model_name,
        version=2,
        run_id=trained.run_id,
        artifact=trained.artifact,
        feature_names=trained.feature_names,
        metrics=trained.metrics,
        lineage=trained.lineage,
    )
    assert registered.correlation_id == trained.correlation_id
    assert registered.causation_id == trained.event_id
    assert registered.event_id != trained.event_id
    assert registered.producer == "registry"
    assert registered.occurred_at >= trained.occurred_at


def test_golden_training_chain_is_linked():
    chain = ["training.requested.v1", "model.trained.v1", "model.registered.v1"]
    chain += ["model.evaluated.v1", "model.promoted.v1"]
    events = [golden_event(t) for t in chain]
    for cause, effect in itertools.pairwise(events):
        assert effect.correlation_id == cause.correlation_id
        assert effect.causation_id == cause.event_id


def test_label_refers_to_the_golden_prediction():
    label = golden_event("label.observed.v1")
    prediction = golden_event("prediction.made.v1")
    assert isinstance(label, LabelObserved) and isinstance(prediction, PredictionMade)
    assert label.prediction_id == prediction.prediction_id


def test_drift_starts_an_incident():
    drift = golden_event("drift.detected.v1")
    assert isinstance(drift, DriftDetected)
    assert drift.correlation_id != golden_event("model.trained.v1").correlation_id


# --- naming -------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_EVENTS, ids=lambda c: c.__name__)
def test_event_type_is_versioned_and_is_the_topic(cls):
    assert re.fullmatch(r"[a-z][a-z_]*(\.[a-z][a-z_]*)+\.v[1-9][0-9]*", cls.event_type)
    assert cls.topic == cls.event_type
    assert len(cls.topic) <= 249 and re.fullmatch(r"[a-zA-Z0-9._-]+", cls.topic)


def test_event_types_are_unique():
    assert len(EVENTS_BY_TYPE) == len(ALL_EVENTS)
    assert len({cls.__name__ for cls in ALL_EVENTS}) == len(ALL_EVENTS)
