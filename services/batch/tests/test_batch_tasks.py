"""Batch scoring of every task over number and category features: output columns per task
(binary score, label; multiclass label, score, p_<class>; regression value) and input cells
read by the signature with the scorer's rules (``modelbus_ml.inputs``)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.csv as pv
import pyarrow.parquet as pq
import pytest

from modelbus_batch.domain import BadJob
from modelbus_batch.scoring import score_file
from modelbus_contracts import Signature
from modelbus_ml.dataset import from_rows
from modelbus_ml.families import train_family
from modelbus_ml.flavors import sha256_of
from modelbus_ml.serving import Served, serve_artifact

SHIFT = {"paris": 2.0, "lyon": 0.0, "nice": -2.0}


def train(task: str) -> Served:
    """A 10-tree sklearn model (ONNX) over ``age`` and a nullable ``city``, served by its
    signature as the batch service serves it."""
    rng = np.random.default_rng(1)
    rows, labels = [], []
    for i in range(240):
        age, city = float(rng.uniform(20, 60)), str(rng.choice(list(SHIFT)))
        rows.append({"age": age, "city": None if i % 10 == 0 else city})
        s = age / 10 + SHIFT[city]
        if task == "multiclass":
            labels.append(("low", "mid", "high")[min(2, max(0, int((s - 2) // 1.5)))])
        else:
            labels.append(3 * s if task == "regression" else int(s > 5))
    ds = from_rows(["age", "city"], rows, labels, task=task)
    trained = train_family(ds, {"family": "sklearn", "n_estimators": 10}, 0)
    return serve_artifact(
        trained.artifact,
        version=7,
        artifact_format=trained.format,
        sha256=sha256_of(trained.artifact),
        feature_names=ds.feature_names,
        signature=Signature(**ds.signature()),
    )


@pytest.fixture(scope="module")
def models() -> dict[str, Served]:
    return {task: train(task) for task in ("binary", "multiclass", "regression")}


CSV = (
    b"id,age,city\n"
    b"1,55,paris\n"
    b"2,21,nice\n"
    b"3,40,\n"  # a missing city: nullable
    b"4,,lyon\n"  # a missing age: not nullable
    b"5,abc,lyon\n"  # not a number
)


def read_csv(data: bytes) -> pa.Table:
    options = pv.ConvertOptions(
        column_types={"id": pa.string(), "error": pa.string(), "label": pa.string()},
        strings_can_be_null=True,
    )
    return pv.read_csv(io.BytesIO(data), convert_options=options)


def run(served: Served, data: bytes, fmt_in: str = "csv", fmt_out: str = "csv"):
    return score_file(
        data, input_format=fmt_in, output_format=fmt_out, served=served, chunk_rows=1000
    )


def reference_rows() -> np.ndarray:
    return np.array([[55.0, "paris"], [21.0, "nice"], [40.0, None]], dtype=object)


def test_multiclass_output_has_label_score_and_a_probability_per_class(models):
    served = models["multiclass"]
    out = run(served, CSV)
    result = read_csv(out.data)
    assert result.column_names == [
        "id",
        "label",
        "score",
        "p_high",
        "p_low",
        "p_mid",
        "model_version",
        "error",
    ]
    proba = served.model.predict_proba(reference_rows())
    got = np.column_stack([result[f"p_{c}"].to_numpy()[:3] for c in ("high", "low", "mid")])
    np.testing.assert_allclose(got, proba, rtol=1e-6)
    assert result["label"].to_pylist()[:3] == [("high", "low", "mid")[i] for i in proba.argmax(1)]
    np.testing.assert_allclose(result["score"].to_numpy()[:3], proba.max(axis=1), rtol=1e-6)
    assert result["label"].to_pylist()[:2] == ["high", "low"]
    assert result["error"].to_pylist() == [None, None, None, "age: null_not_allowed",
                                           "age: not_a_number"]  # fmt: skip
    assert result["p_high"].to_pylist()[3:] == [None, None]
    assert (out.rows, out.failed_rows) == (5, 2)


def test_regression_output_has_the_value(models):
    served = models["regression"]
    result = read_csv(run(served, CSV).data)
    assert result.column_names == ["id", "value", "model_version", "error"]
    want = served.model.predict_values(reference_rows())
    np.testing.assert_allclose(result["value"].to_numpy()[:3], want, rtol=1e-6)
    assert result["value"].to_pylist()[3:] == [None, None]


def test_binary_with_a_category_keeps_score_and_label(models):
    served = models["binary"]
    result = read_csv(run(served, CSV).data)
    assert result.column_names == ["id", "score", "label", "model_version", "error"]
    want = served.model.predict_proba(reference_rows())
    np.testing.assert_allclose(result["score"].to_numpy()[:3], want, rtol=1e-6)
    assert result["label"].to_pylist()[:3] == [str(int(p >= 0.5)) for p in want]


def test_parquet_cells_are_checked_by_kind_too(models):
    table = pa.table(
        {
            "age": pa.array([30.0, 30.0, float("nan")]),
            "city": pa.array([7, None, 3]),  # integers are not categories
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    out = run(models["regression"], sink.getvalue(), "parquet", "parquet")
    result = pq.read_table(io.BytesIO(out.data))
    assert result["error"].to_pylist() == ["city: not_a_category", None, "age: non_finite"]
    assert result["value"].null_count == 2


def test_a_category_longer_than_the_limit_fails_its_row_only(models):
    data = b"id,age,city\n1,30,paris\n2,30," + b"x" * 1001 + b"\n"
    result = read_csv(run(models["regression"], data).data)
    assert result["error"].to_pylist() == [None, "city: category_too_long"]


def test_an_input_column_named_like_an_output_column_fails_the_job(models):
    with pytest.raises(BadJob) as clash:
        run(models["multiclass"], b"age,city,p_low\n1,paris,2\n")
    assert clash.value.reason == "bad_schema"


def test_an_empty_input_still_has_the_task_columns(models):
    out = run(models["multiclass"], b"id,age,city\n", "csv", "parquet")
    result = pq.read_table(io.BytesIO(out.data))
    assert result.num_rows == 0
    assert result.column_names[1:6] == ["label", "score", "p_high", "p_low", "p_mid"]
