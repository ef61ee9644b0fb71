"""Pure scorer logic: the holder's swap, fallback, and parsing of native and v2 requests."""

from __future__ import annotations

import math

import numpy as np
import pytest

from modelbus_ml import LogisticModel
from modelbus_scorer.domain import (
    InvalidInput,
    ModelHolder,
    ModelUnavailable,
    Served,
    Slots,
    parse_native,
    parse_v2,
    predict,
    serving_slots,
)

NAMES = ("age", "income")


def served(version: int, coef=(1.0, 1.0), names=NAMES) -> Served:
    k = len(names)
    model = LogisticModel(names, np.asarray(coef, float), 0.0, np.zeros(k), np.ones(k), 0.5)
    return Served(version, model, names, f"{version:064x}")


SERVED = served(1)


def broken(version: int) -> Served:
    """A model whose predict raises (weights of the wrong length)."""
    model = LogisticModel(NAMES, np.ones(5), 0.0, np.zeros(2), np.ones(2), 0.5)
    return Served(version, model, NAMES, f"{version:064x}")


# --- holder ----------------------------------------------------------------------------------


def test_swap_keeps_the_old_reference_for_requests_in_flight():
    holder = ModelHolder()
    holder.swap("m", served(1))
    in_flight, slots_before = serving_slots(holder, "m")
    holder.swap("m", served(2))
    assert in_flight.version == 1  # the request that started on v1 finishes on v1
    assert slots_before.current.version == 1 and slots_before.previous is None
    after = holder.get("m")
    assert (after.current.version, after.previous.version) == (2, 1)


def test_swap_to_the_same_version_is_a_no_op():
    holder = ModelHolder()
    holder.swap("m", served(1))
    holder.swap("m", served(2))
    before = holder.get("m")
    assert holder.swap("m", served(2)) is before
    assert holder.get("m").previous.version == 1


def test_unknown_and_unloaded_models_are_told_apart():
    holder = ModelHolder()
    with pytest.raises(ModelUnavailable) as unknown:
        serving_slots(holder, "m")
    holder.know("m")
    with pytest.raises(ModelUnavailable) as unloaded:
        serving_slots(holder, "m")
    assert (unknown.value.reason, unloaded.value.reason) == ("unknown_model", "model_not_loaded")


# --- predict / fallback ----------------------------------------------------------------------


def test_predict_scores_on_the_current_model():
    current = served(1)
    result = predict(Slots(current), current, np.array([[0.0, 0.0], [3.0, 3.0]]))
    assert result.served_by == "champion"
    assert result.outputs.scores[0] == pytest.approx(0.5)
    assert result.outputs.labels.tolist() == [1, 1]
    assert result.outputs.scores[1] == pytest.approx(1 / (1 + math.exp(-6)))


def test_predict_falls_back_to_previous_when_current_raises():
    current = broken(2)
    slots = Slots(current=current, previous=served(1, coef=(-1.0, -1.0)))
    result = predict(slots, current, np.array([[2.0, 1.0]]))
    assert result.served_by == "fallback"
    assert result.served.version == 1
    assert result.outputs.scores[0] == pytest.approx(1 / (1 + math.exp(3)))


def test_fallback_reorders_columns_for_a_previous_model_with_other_feature_order():
    current = broken(2)
    previous = served(1, coef=(1.0, 0.0), names=("income", "age"))
    result = predict(Slots(current, previous), current, np.array([[0.0, 2.0]]))  # age=0, inc=2
    assert result.outputs.scores[0] == pytest.approx(1 / (1 + math.exp(-2)))
    assert result.features == NAMES


def test_predict_without_a_fallback_is_unavailable():
    current = broken(1)
    with pytest.raises(ModelUnavailable) as exc:
        predict(Slots(current), current, np.zeros((1, 2)))
    assert exc.value.reason == "predict_failed"


# --- native parsing --------------------------------------------------------------------------


def test_native_instances_are_put_in_feature_order():
    parsed = parse_native(
        {"instances": [{"income": 2, "age": 1.5}], "request_id": "r1"}, SERVED, 10
    )
    assert parsed.X.tolist() == [[1.5, 2.0]]
    assert parsed.request_id == "r1"


def test_native_single_features_object():
    parsed = parse_native({"features": {"age": 1, "income": 2}}, SERVED, 10)
    assert parsed.X.shape == (1, 2)
    assert parsed.request_id is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ([], "bad_request"),
        ({}, "bad_request"),
        ({"instances": {}}, "bad_request"),
        ({"instances": [1]}, "bad_request"),
        ({"instances": []}, "empty_batch"),
        ({"instances": [{"age": 1}]}, "feature_mismatch"),
        ({"instances": [{"age": 1, "income": 2, "zip": 3}]}, "feature_mismatch"),
        ({"instances": [{"age": "1", "income": 2}]}, "not_a_number"),
        ({"instances": [{"age": True, "income": 2}]}, "not_a_number"),
        ({"instances": [{"age": None, "income": 2}]}, "not_a_number"),
        ({"instances": [{"age": float("nan"), "income": 2}]}, "non_finite"),
        ({"instances": [{"age": float("inf"), "income": 2}]}, "non_finite"),
        ({"instances": [{"age": 10**400, "income": 2}]}, "not_a_number"),
        ({"instances": [{"age": 1, "income": 2}] * 4}, "too_many_instances"),
        ({"features": {"age": 1, "income": 2}, "request_id": 7}, "bad_request"),
    ],
)
def test_native_rejects_bad_input_with_a_reason(body, reason):
    with pytest.raises(InvalidInput) as exc:
        parse_native(body, SERVED, 3)
    assert exc.value.reason == reason
    assert exc.value.message


def test_feature_mismatch_names_the_missing_and_unknown_features():
    with pytest.raises(InvalidInput) as exc:
        parse_native({"instances": [{"age": 1, "zip": 3}]}, SERVED, 3)
    assert "['income']" in exc.value.message and "['zip']" in exc.value.message


# --- v2 parsing ------------------------------------------------------------------------------


def test_v2_one_input_per_feature():
    body = {
        "id": "abc",
        "inputs": [
            {"name": "income", "shape": [2], "datatype": "INT64", "data": [10, 20]},
            {"name": "age", "shape": [2, 1], "datatype": "FP32", "data": [[1.0], [2.0]]},
        ],
    }
    parsed = parse_v2(body, SERVED, 10)
    assert parsed.X.tolist() == [[1.0, 10.0], [2.0, 20.0]]
    assert parsed.id == "abc"


def test_v2_single_matrix_input_in_feature_order():
    body = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP64", "data": [1, 2, 3, 4]}]}
    parsed = parse_v2(body, SERVED, 10)
    assert parsed.X.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert parsed.id is None


def test_v2_matrix_accepts_nested_row_major_data():
    body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [[5, 6]]}]}
    assert parse_v2(body, SERVED, 10).X.tolist() == [[5.0, 6.0]]


def _col(name, data, shape=None, datatype="FP64"):
    return {"name": name, "shape": shape or [len(data)], "datatype": datatype, "data": data}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({}, "bad_request"),
        ({"inputs": []}, "bad_request"),
        ({"inputs": [_col("age", [1])], "id": 3}, "bad_request"),
        ({"inputs": [_col("age", [1]), _col("income", [1], datatype="BYTES")]}, "bad_datatype"),
        ({"inputs": [_col("age", [1]), _col("income", [1], shape=[2])]}, "length_mismatch"),
        ({"inputs": [_col("age", [1]), _col("income", [1, 2])]}, "length_mismatch"),
        ({"inputs": [_col("age", [1])]}, "feature_mismatch"),
        ({"inputs": [_col("age", [1]), _col("income", [1]), _col("zip", [1])]}, "feature_mismatch"),
        ({"inputs": [_col("age", [1]), _col("age", [1])]}, "feature_mismatch"),
        ({"inputs": [_col("age", []), _col("income", [])]}, "empty_batch"),
        ({"inputs": [_col("age", [1]), _col("income", ["x"])]}, "not_a_number"),
        ({"inputs": [_col("age", [1]), _col("income", [1.5], datatype="INT64")]}, "not_a_number"),
        ({"inputs": [_col("age", [1]), _col("income", [float("nan")])]}, "non_finite"),
        ({"inputs": [_col("age", [1]), _col("income", [1], shape=[-1])]}, "bad_shape"),
        ({"inputs": [_col("x", [1, 2, 3], shape=[1, 3])]}, "feature_mismatch"),
        ({"inputs": [_col("age", [1, 2], shape=[1, 2]), _col("income", [1])]}, "bad_shape"),
        ({"inputs": [_col("x", [1, 2] * 5, shape=[5, 2])]}, "too_many_instances"),
        ({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64"}]}, "bad_request"),
    ],
)
def test_v2_rejects_bad_requests_with_a_reason(body, reason):
    with pytest.raises(InvalidInput) as exc:
        parse_v2(body, SERVED, 4)
    assert exc.value.reason == reason


@pytest.mark.parametrize(
    "data",
    [
        [1, 2.5, -3, 4e10],
        [0.0, 0.0, 1.0, 1.0],
    ],
)
def test_the_plain_matrix_shortcut_reads_what_the_general_path_reads(data):
    from modelbus_scorer.domain import _matrix_input, _plain_matrix, _tensor

    body = {"inputs": [_col("x", data, shape=[2, 2])]}

    fast = _plain_matrix(body["inputs"], NAMES, 10)
    general = _matrix_input(_tensor(body["inputs"][0], 0), NAMES, 10)

    assert fast is not None and fast.dtype == np.float64
    assert fast.tolist() == general.tolist()


@pytest.mark.parametrize(
    "tensor",
    [
        _col("x", [1, "2"], shape=[1, 2]),
        _col("x", [1, True], shape=[1, 2]),
        _col("x", [1, float("inf")], shape=[1, 2]),
        _col("x", [1, 2], shape=[1, 2], datatype="INT64"),
        _col("x", [[1, 2]], shape=[1, 2]),
        _col("x", [1, 2, 3], shape=[1, 2]),
        _col("x", [1, 2], shape=[2, 1]),
        _col("x", [1, 10**400], shape=[1, 2]),
        _col("x", [1] * 10, shape=[5, 2]),  # over the limit
    ],
)
def test_the_plain_matrix_shortcut_leaves_anything_unusual_to_the_general_path(tensor):
    from modelbus_scorer.domain import _plain_matrix

    assert _plain_matrix([tensor], NAMES, 4) is None


@pytest.mark.parametrize("bad", [float("nan"), 1.5, -0.1])
def test_scores_outside_zero_one_or_nan_are_refused(bad):
    model = served(1).model
    object.__setattr__(model, "predict_proba", lambda X: np.full(len(X), bad))

    broken = Served(1, model, NAMES, "0" * 64)
    for rows in (1, 3):
        with pytest.raises(FloatingPointError, match="outside"):
            broken.score(np.zeros((rows, 2)))
