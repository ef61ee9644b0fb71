"""Batch scoring's pure part: chunking, CSV and Parquet round trips, bad rows, uris."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.csv as pv
import pyarrow.parquet as pq
import pytest

from modelbus_batch.domain import (
    BadJob,
    default_output_uri,
    errors_uri_for,
    file_format,
    object_key,
)
from modelbus_batch.scoring import ChunkedScorer, score_file, to_float
from modelbus_embedded.testing import tiny_model
from modelbus_ml.serving import Served

FEATURES = ("age", "income")


def served(version: int = 3) -> Served:
    model = tiny_model(coef=[0.5, -0.25], intercept=0.1)
    return Served(version, model, model.feature_names, "0" * 64)


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def run(data: bytes, fmt_in: str, fmt_out: str, chunk_rows: int = 1000, **kw):
    s = served()
    return score_file(
        data,
        input_format=fmt_in,
        output_format=fmt_out,
        served=s,
        chunk_rows=chunk_rows,
        **kw,
    )


def expected_scores(age: np.ndarray, income: np.ndarray) -> np.ndarray:
    X = np.column_stack([age, income]).astype(np.float64)
    return served().model.predict_proba(X)


def test_parquet_round_trip_in_chunks_keeps_order_and_the_id_column():
    n = 2_345
    rng = np.random.default_rng(0)
    table = pa.table(
        {
            "id": np.arange(n),
            "age": rng.normal(size=n),
            "income": rng.integers(0, 100, n),  # integers are numbers too
            "note": ["x"] * n,
        }
    )
    s = served()
    scorer = ChunkedScorer(
        parquet_bytes(table),
        input_format="parquet",
        output_format="parquet",
        served=s,
        chunk_rows=1000,
    )
    sizes = []
    while (chunk := scorer.step()) is not None:
        sizes.append(chunk.rows)
    out = scorer.finish()
    assert sizes == [1000, 1000, 345]
    assert scorer.rows_total == n
    result = pq.read_table(io.BytesIO(out.data))
    assert result.column_names == ["id", "score", "label", "model_version", "error"]
    assert result["id"].to_pylist() == list(range(n))
    want = expected_scores(table["age"].to_numpy(), table["income"].to_numpy())
    np.testing.assert_allclose(result["score"].to_numpy(), want)
    assert result["label"].to_pylist() == (want >= 0.5).astype(int).tolist()
    assert set(result["model_version"].to_pylist()) == {3}
    assert result["error"].null_count == n
    assert (out.rows, out.failed_rows, out.errors) == (n, 0, None)


def test_without_an_id_column_every_input_column_is_kept():
    table = pa.table({"age": [1.0, 2.0], "income": [3.0, 4.0], "region": ["n", "s"]})
    out = run(parquet_bytes(table), "parquet", "parquet")
    result = pq.read_table(io.BytesIO(out.data))
    assert result.column_names[:3] == ["age", "income", "region"]
    assert result["region"].to_pylist() == ["n", "s"]


def test_csv_bad_rows_are_written_with_a_reason_and_counted():
    data = (
        b"id,age,income\n"
        b"1,1.5,2\n"
        b"2,abc,2\n"  # not a number
        b"3,,2\n"  # missing
        b"4,1,nan\n"  # non-finite
        b"5,1\n"  # malformed: too few fields
        b"6, 2.5 ,1e1\n"
    )
    out = run(data, "csv", "csv")
    options = pv.ConvertOptions(
        column_types={"id": pa.string(), "error": pa.string()}, strings_can_be_null=True
    )
    result = pv.read_csv(io.BytesIO(out.data), convert_options=options)
    assert result["id"].to_pylist() == ["1", "2", "3", "4", "6"]
    assert result["error"].to_pylist() == [
        None,
        "age: not_a_number",
        "age: missing",
        "income: non_finite",
        None,
    ]
    scores = result["score"].to_pylist()
    assert scores[1:4] == [None, None, None]
    want = expected_scores(np.array([1.5, 2.5]), np.array([2.0, 10.0]))
    np.testing.assert_allclose([scores[0], scores[4]], want)
    assert (out.rows, out.failed_rows) == (6, 4)
    errors = pv.read_csv(io.BytesIO(out.errors))
    assert errors["text"].to_pylist() == ["5,1"]
    assert errors["error"][0].as_py().startswith("malformed_row")


def test_csv_in_parquet_out_and_bad_values_in_a_later_chunk():
    good = "".join(f"{i},{i % 7},{i % 5}\n" for i in range(300))
    data = ("id,age,income\n" + good + "300,x,1\n").encode()
    out = run(data, "csv", "parquet", chunk_rows=50)
    result = pq.read_table(io.BytesIO(out.data))
    assert result.num_rows == 301
    assert result["error"].to_pylist()[-1] == "age: not_a_number"
    assert result["error"].null_count == 300
    assert (out.rows, out.failed_rows) == (301, 1)


def test_parquet_nulls_and_nan_are_failed_rows():
    table = pa.table({"age": pa.array([1.0, None, float("nan")]), "income": [1.0, 2.0, 3.0]})
    out = run(parquet_bytes(table), "parquet", "parquet")
    result = pq.read_table(io.BytesIO(out.data))
    assert result["error"].to_pylist() == [None, "age: missing", "age: non_finite"]
    assert result["label"].to_pylist()[1:] == [None, None]
    assert out.failed_rows == 2


def test_a_missing_feature_column_or_a_clashing_column_fails_the_job():
    with pytest.raises(BadJob) as missing:
        run(b"id,age\n1,2\n", "csv", "csv")
    assert missing.value.reason == "missing_features"
    with pytest.raises(BadJob) as clash:
        run(b"age,income,score\n1,2,3\n", "csv", "csv")
    assert clash.value.reason == "bad_schema"
    with pytest.raises(BadJob) as garbage:
        run(b"not parquet", "parquet", "parquet")
    assert garbage.value.reason == "unreadable_input"


def test_an_empty_input_gives_a_valid_empty_output():
    out = run(b"id,age,income\n", "csv", "parquet")
    result = pq.read_table(io.BytesIO(out.data))
    assert result.num_rows == 0
    assert "score" in result.column_names


def test_to_float_codes_mixed_strings():
    values, codes = to_float(pa.array(["1", " 2 ", "x", "", None, "inf", "-.5"]))
    assert codes.tolist() == [0, 0, 2, 1, 1, 3, 0]
    assert values[[0, 1, 6]].tolist() == [1.0, 2.0, -0.5]
    _, codes = to_float(pa.array([True, False]))
    assert codes.tolist() == [0, 0]
    _, codes = to_float(pa.array([[1], [2]]))
    assert codes.tolist() == [2, 2]


def test_uris_formats_and_default_outputs():
    assert default_output_uri("data/day.parquet") == "data/day.scores.parquet"
    assert default_output_uri("s3://b/data/day.CSV") == "s3://b/data/day.scores.csv"
    assert errors_uri_for("data/day.scores.csv") == "data/day.scores.errors.csv"
    assert file_format("x.pq") == "parquet"
    assert object_key("s3://bucket/a/b.csv", "bucket") == "a/b.csv"
    assert object_key("a/b.csv") == "a/b.csv"
    for bad in ("data/day.json", "data/"):
        with pytest.raises(BadJob):
            file_format(bad) if bad.endswith("json") else object_key(bad)
    with pytest.raises(BadJob):
        object_key("s3://other/a.csv", "bucket")
    with pytest.raises(BadJob):
        object_key("a/../../etc.csv")
