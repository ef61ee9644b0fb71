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
        (b"a,label\n1,2\n", "label must be 0 or 1"),
        (b"a,label\nx,1\n", "line 2"),
        (b"a,label\nnan,1\n", "NaN"),
        (b"a,label\n1\n", "fields"),
    ],
)
def test_bad_csv_gets_a_clear_error(csv: bytes, message: str):
    with pytest.raises(DatasetError, match=message):
        from_csv_bytes(csv)


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
