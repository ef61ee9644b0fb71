"""The built-in model family: deterministic training, safe artifacts, correct metrics."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from modelbus_ml import (
    ArtifactError,
    Dataset,
    DatasetError,
    LogisticModel,
    evaluate,
    feature_stats,
    from_csv_bytes,
    from_rows,
    roc_auc,
    split_holdout,
    train_logreg,
)


def make_dataset(seed: int = 1, rows: int = 1500) -> Dataset:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 3))
    y = (X @ np.array([1.5, -1.0, 0.0]) + rng.normal(0, 0.5, rows) > 0).astype(np.int8)
    return Dataset(("a", "b", "c"), X, y)


def sha(model: LogisticModel) -> str:
    return hashlib.sha256(model.to_bytes()).hexdigest()


def test_same_data_params_seed_give_the_same_artifact_hash():
    train, _ = split_holdout(make_dataset(), 0.25, seed=3)
    first = train_logreg(train, {"epochs": 200}, seed=11)
    again = train_logreg(from_csv_bytes(train.to_csv_bytes()), {"epochs": 200}, seed=11)
    assert sha(first) == sha(again)
    assert sha(train_logreg(train, {"epochs": 200}, seed=12)) != sha(first)
    assert sha(train_logreg(train, {"epochs": 201}, seed=11)) != sha(first)


def test_model_learns_and_round_trips_through_its_artifact():
    train, holdout = split_holdout(make_dataset(), 0.25, seed=3)
    model = train_logreg(train, seed=0)
    metrics = evaluate(model, holdout)
    assert metrics["auc"] > 0.9
    assert metrics["accuracy"] > 0.8
    assert metrics["rows"] == holdout.rows
    loaded = LogisticModel.from_bytes(model.to_bytes())
    np.testing.assert_array_equal(loaded.predict_proba(holdout.X), model.predict_proba(holdout.X))


@pytest.mark.parametrize(
    "payload",
    [
        b"\x80\x04pickle",
        b'{"format": "other"}',
        b'{"format": "modelbus.logreg.v1"}',
        b'{"format":"modelbus.logreg.v1","feature_names":["a"],"coef":[1,2],"intercept":0,'
        b'"mean":[0],"scale":[1],"threshold":0.5}',
        b'{"format":"modelbus.logreg.v1","feature_names":["a"],"coef":[1],"intercept":0,'
        b'"mean":[0],"scale":[0],"threshold":0.5}',
    ],
)
def test_bad_artifacts_are_refused(payload: bytes):
    with pytest.raises(ArtifactError):
        LogisticModel.from_bytes(payload)


def test_split_is_deterministic_and_disjoint():
    ds = make_dataset(rows=400)
    a_train, a_hold = split_holdout(ds, 0.25, seed=5)
    _, b_hold = split_holdout(ds, 0.25, seed=5)
    assert a_hold.sha256() == b_hold.sha256()
    assert a_train.rows + a_hold.rows == ds.rows
    assert a_hold.rows == 100
    _, other = split_holdout(ds, 0.25, seed=6)
    assert other.sha256() != a_hold.sha256()


@pytest.mark.parametrize(
    ("csv", "message"),
    [
        (b"", "empty"),
        (b"a,b\n1,2\n", "no 'label' column"),
        (b"a,label\n1,2\n", "at least two classes"),
        (b"a,label\nx,\n", "line 2: empty label"),
        (b"a,label\n1,x\n2,0\n", "mix numbers and strings"),
        (b"a,label\nnan,1\n", "NaN"),
        (b"a,label\n1\n", "fields"),
    ],
)
def test_bad_csv_gets_a_clear_error(csv: bytes, message: str):
    with pytest.raises(DatasetError, match=message):
        from_csv_bytes(csv)


def test_a_task_given_is_held_to():
    with pytest.raises(DatasetError, match="must be 0 or 1"):
        from_csv_bytes(b"a,label\n1,2\n2,0\n", task="binary")
    with pytest.raises(DatasetError, match="numeric labels"):
        from_csv_bytes(b"a,label\n1,x\n2,y\n", task="regression")


def test_csv_of_every_task_and_kind_round_trips():
    csv = b"age,city,label\n31.5,Paris,setosa\n,Lyon,virginica\n40,,setosa\n"
    ds = from_csv_bytes(csv)
    assert (ds.task, ds.classes, ds.feature_kinds) == (
        "multiclass",
        ("setosa", "virginica"),
        ("number", "category"),
    )
    assert ds.y.tolist() == [0, 1, 0]
    assert ds.X[2, 1] is None and np.isnan(ds.X[1, 0])
    assert from_csv_bytes(ds.to_csv_bytes()).sha256() == ds.sha256()
    sig = ds.signature()
    assert sig["features"][0] == {
        "name": "age",
        "kind": "number",
        "nullable": True,
        "categories": [],
    }
    assert sig["features"][1]["categories"] == ["Lyon", "Paris"]
    stats = feature_stats(ds)
    assert stats["city"]["frequencies"] == {"Lyon": 0.5, "Paris": 0.5}
    assert stats["age"]["missing_rate"] == pytest.approx(1 / 3)
    reg = from_csv_bytes(b"a,label\n1,0.5\n2,1.5\n3,-2\n")
    assert (reg.task, reg.y.tolist()) == ("regression", [0.5, 1.5, -2.0])
    assert from_csv_bytes(b"a,label\n1,3\n2,10\n3,3\n").classes == ("3", "10")


def test_auc_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    score = np.round(rng.random(300), 1)  # many ties
    pos, neg = score[y == 1], score[y == 0]
    pairwise = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert roc_auc(y, score) == pytest.approx(pairwise / (pos.size * neg.size))
    assert roc_auc(np.ones(5), np.arange(5.0)) == 0.5


def test_feature_stats_describe_each_column():
    ds = make_dataset(rows=1000)
    stats = feature_stats(ds)
    assert set(stats) == {"a", "b", "c"}
    assert stats["a"]["count"] == 1000
    assert abs(stats["a"]["mean"]) < 0.15
    assert 0.85 < stats["a"]["std"] < 1.15
    assert stats["a"]["min"] <= stats["a"]["quantiles"]["p01"] <= stats["a"]["quantiles"]["p99"]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("a\x00b,label", r"column 0's name holds a control character"),
        ("a,b\tc,label", r"column 1's name holds a control character"),
        ("a,label,\x7f", r"column 2's name holds a control character"),
        ('"a\nb",label', r"column 0's name holds a control character"),
        (",label", r"column 0's name is empty"),
        ("a" * 201 + ",label", "longer than 200 characters"),
    ],
)
def test_a_csv_column_name_with_a_control_character_is_refused(header: str, message: str):
    data = header + "\n" + "\n".join("1,0,1"[: 2 * header.count(",") + 1] for _ in range(4))
    with pytest.raises(DatasetError, match=message):
        from_csv_bytes(data.encode())


def test_printable_names_in_any_script_are_kept():
    ds = from_csv_bytes("âge,naïve café,label\n1,2,0\n2,1,1\n".encode())
    assert ds.feature_names == ("âge", "naïve café")


def test_from_rows_refuses_bad_and_repeated_names():
    rows = [{"a": 1.0, "b\x00": 2.0}, {"a": 2.0, "b\x00": 1.0}]
    with pytest.raises(DatasetError, match="column 1's name holds a control character"):
        from_rows(["a", "b\x00"], rows, [0, 1])
    with pytest.raises(DatasetError, match="duplicate column names"):
        from_rows(["a", "a"], rows, [0, 1])
    assert from_rows(["a"], rows, [0, 1]).feature_names == ("a",)


def test_train_logreg_refuses_unbounded_params_before_any_epoch():
    with pytest.raises(ValueError, match=r"epochs must be within \[1, 5000\]"):
        train_logreg(make_dataset(rows=100), {"epochs": 400_000})
