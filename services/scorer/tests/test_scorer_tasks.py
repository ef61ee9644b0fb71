"""Every task over number and category features: requests parsed by the version's signature
(each refusal with its reason, naming the feature and the row), answers per task over native
HTTP and OIP v2, the v2 metadata, and the stream path's ScoringFailed for a bad record."""

from __future__ import annotations

import numpy as np
import pytest

from modelbus_contracts import PredictionMade, ScoringFailed, ScoringRequested
from modelbus_ml.inputs import from_text
from modelbus_scorer.api_models import InferResponse, PredictResponse
from modelbus_scorer.domain import InvalidInput, Served, parse_native, parse_v2
from modelbus_scorer.handlers import scores_requested

from .conftest import put_trained
from .test_scorer_api import Api
from .test_scorer_service import Harness

# parsing needs the signature only: no model behind it
MIXED = Served(1, None, ("age", "city"), "0" * 64, ("number", "category"), (False, True))  # type: ignore[arg-type]
NULLABLE_NUMBERS = Served(1, None, ("a", "b"), "0" * 64, ("number", "number"), (True, False))  # type: ignore[arg-type]


# --- parsing by signature --------------------------------------------------------------------


def test_a_mixed_request_becomes_an_object_matrix_in_feature_order():
    body = {"instances": [{"city": "paris", "age": 41}, {"age": 20.5, "city": None}]}
    X = parse_native(body, MIXED, 10).X
    assert X.dtype == object
    assert X.tolist() == [[41.0, "paris"], [20.5, None]]
    assert type(X[0, 0]) is float


def test_nullable_numbers_stay_a_float_matrix_with_nan_for_null():
    X = parse_native({"instances": [{"a": None, "b": 1}, {"a": 2, "b": 3}]}, NULLABLE_NUMBERS, 10).X
    assert X.dtype == np.float64
    assert np.isnan(X[0, 0]) and X[1].tolist() == [2.0, 3.0]


@pytest.mark.parametrize(
    ("row", "reason", "feature"),
    [
        ({"age": "41", "city": "paris"}, "not_a_number", "age"),
        ({"age": True, "city": "paris"}, "not_a_number", "age"),
        ({"age": float("inf"), "city": "paris"}, "non_finite", "age"),
        ({"age": None, "city": "paris"}, "null_not_allowed", "age"),
        ({"age": 1, "city": 7}, "not_a_category", "city"),
        ({"age": 1, "city": ["paris"]}, "not_a_category", "city"),
        ({"age": 1, "city": "x" * 1001}, "category_too_long", "city"),
    ],
)
def test_each_bad_value_is_refused_with_its_reason_naming_feature_and_row(row, reason, feature):
    good = {"age": 30, "city": "lyon"}
    with pytest.raises(InvalidInput) as exc:
        parse_native({"instances": [good, good, row]}, MIXED, 10)
    assert exc.value.reason == reason
    assert f"feature {feature!r}, row 2" in exc.value.message


def test_a_missing_or_unknown_feature_is_a_feature_mismatch():
    with pytest.raises(InvalidInput) as exc:
        parse_native({"features": {"age": 1, "town": "x"}}, MIXED, 10)
    assert exc.value.reason == "feature_mismatch"
    assert "['city']" in exc.value.message and "['town']" in exc.value.message


def test_a_category_is_a_string_even_when_it_looks_like_a_number():
    X = parse_native({"features": {"age": 1, "city": "75"}}, MIXED, 10).X
    assert X.tolist() == [[1.0, "75"]]


def _col(name, data, datatype):
    return {"name": name, "shape": [len(data)], "datatype": datatype, "data": data}


def test_v2_takes_bytes_for_a_category_and_numbers_for_a_number():
    body = {
        "inputs": [
            _col("city", ["nice", None], "BYTES"),
            _col("age", [30, 40], "INT64"),
        ]
    }
    assert parse_v2(body, MIXED, 10).X.tolist() == [[30.0, "nice"], [40.0, None]]


@pytest.mark.parametrize(
    ("inputs", "reason"),
    [
        ([_col("age", [1.0], "FP64"), _col("city", [1.0], "FP64")], "bad_datatype"),
        ([_col("age", ["1"], "BYTES"), _col("city", ["a"], "BYTES")], "bad_datatype"),
        ([_col("age", [1.0], "FP64"), _col("city", [5], "BYTES")], "not_a_category"),
        ([_col("age", [None], "FP64"), _col("city", ["a"], "BYTES")], "null_not_allowed"),
        ([_col("age", [1.0], "FP64")], "feature_mismatch"),
        ([{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}], "feature_mismatch"),
        ([_col("age", [1.0], "FP64"), _col("city", ["a"], "STRING")], "bad_datatype"),
    ],
)
def test_v2_refuses_what_the_signature_does_not_take(inputs, reason):
    with pytest.raises(InvalidInput) as exc:
        parse_v2({"inputs": inputs}, MIXED, 10)
    assert exc.value.reason == reason


def test_a_numeric_model_still_refuses_bytes():
    numeric = Served(1, None, ("age", "income"), "0" * 64)  # type: ignore[arg-type]
    body = {"inputs": [_col("age", [1], "FP64"), _col("income", ["1"], "BYTES")]}
    with pytest.raises(InvalidInput) as exc:
        parse_v2(body, numeric, 10)
    assert exc.value.reason == "bad_datatype"


@pytest.mark.parametrize(
    ("cell", "kind", "value"),
    [
        ("", "number", None),
        (" 2.5 ", "number", 2.5),
        ("abc", "number", "abc"),  # stays text: check_value refuses it as not_a_number
        ("", "category", None),
        ("paris", "category", "paris"),
        ("3", "category", "3"),
        (7, "number", 7),  # a typed (Parquet) cell is itself
    ],
)
def test_a_file_cell_stands_for_the_value_the_json_rules_check(cell, kind, value):
    assert from_text(cell, kind) == value


# --- answers per task over HTTP ---------------------------------------------------------------


@pytest.fixture(params=["fast", "framework"])
async def task_api(request, tmp_path, task_models):
    a = Api(tmp_path, fast=request.param == "fast")
    a.service.max_instances = 10
    for version, task in enumerate(("binary", "multiclass", "regression"), start=1):
        trained, ds = task_models[task]
        a.registry.put(await put_trained(a.store, task, version, trained, ds), champion=True)
    await a.service.sync_all()
    yield a
    await a.client.aclose()


ROWS = [{"age": 55.0, "city": "paris"}, {"age": 21.0, "city": "nice"}, {"age": 40.0, "city": None}]


def expected(task_models, task: str):
    trained, _ = task_models[task]
    X = np.array([[r["age"], r["city"]] for r in ROWS], dtype=object)
    if task == "regression":
        return trained.model.predict_values(X)
    return trained.model.predict_proba(X)


async def test_native_multiclass_answers_the_class_its_score_and_every_probability(
    task_api, task_models
):
    response = await task_api.client.post("/models/multiclass/predict", json={"instances": ROWS})
    assert response.status_code == 200, response.text
    doc = PredictResponse.model_validate(response.json()).model_dump()
    proba = expected(task_models, "multiclass")
    classes = ["high", "low", "mid"]
    for p, want in zip(doc["predictions"], proba, strict=True):
        assert p["probabilities"] == pytest.approx(dict(zip(classes, want.tolist(), strict=True)))
        assert p["label"] == classes[int(want.argmax())]
        assert p["score"] == pytest.approx(want.max())
        assert p["value"] is None
    assert [p["label"] for p in doc["predictions"][:2]] == ["high", "low"]  # learned, not luck


async def test_native_regression_answers_the_value(task_api, task_models):
    response = await task_api.client.post("/models/regression/predict", json={"instances": ROWS})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert set(predictions[0]) == {"prediction_id", "value"}
    values = [p["value"] for p in predictions]
    assert values == pytest.approx(expected(task_models, "regression").tolist(), rel=1e-5)
    assert values[0] > values[1]  # paris at 55 is far above nice at 21 (3 * 7.5 vs 3 * 0.1)


async def test_native_binary_with_a_category_answers_score_and_label(task_api, task_models):
    response = await task_api.client.post("/models/binary/predict", json={"instances": ROWS})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    scores = expected(task_models, "binary")
    assert [p["score"] for p in predictions] == pytest.approx(scores.tolist(), rel=1e-5)
    assert [p["label"] for p in predictions] == [int(s >= 0.5) for s in scores]


async def test_a_bad_category_is_a_422_with_its_reason(task_api):
    body = {"instances": [ROWS[0], {"age": 30, "city": 3}]}
    response = await task_api.client.post("/models/multiclass/predict", json=body)
    assert response.status_code == 422
    doc = response.json()
    assert doc["reason"] == "not_a_category"
    assert "feature 'city', row 1" in doc["error"]
    assert task_api.rejected("not_a_category") == 1


def v2_body():
    return {
        "id": "q",
        "inputs": [
            {"name": "age", "shape": [3], "datatype": "FP64", "data": [r["age"] for r in ROWS]},
            {"name": "city", "shape": [3], "datatype": "BYTES", "data": [r["city"] for r in ROWS]},
        ],
    }


async def test_v2_multiclass_outputs_label_bytes_and_probabilities_with_their_classes(
    task_api, task_models
):
    response = await task_api.client.post("/v2/models/multiclass/infer", json=v2_body())
    assert response.status_code == 200, response.text
    doc = InferResponse.model_validate(response.json()).model_dump()
    outputs = {o["name"]: o for o in doc["outputs"]}
    assert set(outputs) == {"label", "score", "probabilities"}
    proba = expected(task_models, "multiclass")
    assert outputs["probabilities"]["shape"] == [3, 3]
    assert outputs["probabilities"]["parameters"] == {"classes": ["high", "low", "mid"]}
    assert outputs["probabilities"]["data"] == pytest.approx(proba.ravel().tolist())
    assert outputs["label"]["datatype"] == "BYTES"
    assert outputs["label"]["data"] == [["high", "low", "mid"][i] for i in proba.argmax(axis=1)]


async def test_v2_regression_outputs_a_value(task_api, task_models):
    response = await task_api.client.post("/v2/models/regression/infer", json=v2_body())
    assert response.status_code == 200, response.text
    doc = InferResponse.model_validate(response.json()).model_dump()
    [value] = doc["outputs"]
    assert (value["name"], value["datatype"], value["shape"]) == ("value", "FP64", [3])
    assert value["data"] == pytest.approx(expected(task_models, "regression").tolist(), rel=1e-5)


async def test_v2_a_matrix_input_for_a_model_with_categories_is_refused(task_api):
    body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1.0, 2.0]}]}
    response = await task_api.client.post("/v2/models/regression/infer", json=body)
    assert response.status_code == 422
    assert response.json()["reason"] == "feature_mismatch"


async def test_v2_metadata_lists_inputs_by_signature_and_outputs_by_task(task_api):
    doc = (await task_api.client.get("/v2/models/multiclass")).json()
    assert doc["inputs"] == [
        {"name": "age", "datatype": "FP64", "shape": [-1]},
        {"name": "city", "datatype": "BYTES", "shape": [-1], "parameters": {"nullable": True}},
    ]
    assert [(o["name"], o["datatype"]) for o in doc["outputs"]] == [
        ("label", "BYTES"),
        ("score", "FP64"),
        ("probabilities", "FP64"),
    ]
    assert doc["parameters"]["task"] == "multiclass"
    assert doc["parameters"]["classes"] == ["high", "low", "mid"]
    assert doc["platform"] == "modelbus-sklearn"
    regression = (await task_api.client.get("/v2/models/regression")).json()
    assert regression["outputs"] == [{"name": "value", "datatype": "FP64", "shape": [-1]}]


async def test_predictions_made_carry_the_fields_of_each_task(task_api):
    await task_api.log.start()
    for task in ("multiclass", "regression"):
        response = await task_api.client.post(f"/models/{task}/predict", json={"instances": ROWS})
        assert response.status_code == 200
    await task_api.log.stop()
    events = task_api.publisher.of(PredictionMade)
    multiclass = [e for e in events if e.model_name == "multiclass"]
    regression = [e for e in events if e.model_name == "regression"]
    assert len(multiclass) == len(regression) == 3
    assert multiclass[0].label == "high" and set(multiclass[0].probabilities) == {
        "high",
        "low",
        "mid",
    }
    assert multiclass[2].features == {"age": 40.0, "city": None}
    assert all(e.value is not None and e.score is None and e.label is None for e in regression)


# --- the stream path --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("features", "reason"),
    [
        ({"age": 30.0, "city": 3.0}, "not_a_category"),
        ({"age": None, "city": "paris"}, "null_not_allowed"),
        ({"age": "old", "city": "paris"}, "not_a_number"),
    ],
)
async def test_a_bad_stream_record_becomes_scoring_failed_with_the_reason(
    tmp_path, task_models, features, reason
):
    h = Harness(tmp_path)
    trained, ds = task_models["multiclass"]
    h.registry.put(await put_trained(h.store, "mc", 1, trained, ds), champion=True)
    await h.service.sync_all()
    good = ScoringRequested(model_name="mc", request_id="ok", features={"age": 50.0, "city": None})
    bad = ScoringRequested(model_name="mc", request_id="bad", features=features)
    await scores_requested(h.service, [good, bad])  # returns normally
    [failed] = h.publisher.of(ScoringFailed)
    assert failed.request_id == "bad"
    assert failed.error.startswith(reason) and "feature" in failed.error
    [made] = h.publisher.of(PredictionMade)
    assert made.request_id == "ok" and made.label in ("high", "low", "mid")
    assert made.features == {"age": 50.0, "city": None}
