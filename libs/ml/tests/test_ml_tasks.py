"""Every task over number and category features with missing values: datasets, the families
that take them, ONNX artifacts with one input per feature, served outputs, metrics and the
row losses the deployer's paired test uses; models from outside of every task."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from modelbus_ml import ArtifactError, FamilyError, evaluate, split_holdout, train_family
from modelbus_ml.dataset import Dataset, from_rows
from modelbus_ml.evaluation import (
    DEFAULT_METRIC,
    METRICS_BY_TASK,
    prior_row_losses,
    row_losses_of,
    summarise,
)
from modelbus_ml.flavors import load_model
from modelbus_ml.onnx import import_onnx, load_onnx
from modelbus_ml.serving import serve_artifact

CITIES = ("paris", "lyon", "nice")
SHIFT = {"paris": 2.0, "lyon": 0.0, "nice": -2.0}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tabular(task: str, rows: int = 900, seed: int = 3) -> Dataset:
    """age (number), city (category, sometimes missing), income (number, sometimes missing);
    the label depends on age and city, so the category carries signal."""
    rng = np.random.default_rng(seed)
    records, labels = [], []
    for i in range(rows):
        age, city = float(rng.normal(40, 10)), str(rng.choice(CITIES))
        income = None if i % 11 == 0 else float(rng.normal(50, 20))
        records.append({"age": age, "city": None if i % 13 == 0 else city, "income": income})
        s = age / 10 + SHIFT[city] + rng.normal(0, 0.3)
        if task == "binary":
            labels.append(int(s > 4))
        elif task == "multiclass":
            labels.append(("low", "mid", "high")[int(np.clip((s - 2) // 1.5, 0, 2))])
        else:
            labels.append(3 * s + rng.normal())
    return from_rows(("age", "city", "income"), records, labels)


FAST = {"family": "sklearn", "n_estimators": 30}


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_sklearn_learns_every_task_over_categories_and_serves_it_through_onnx(task):
    ds = tabular(task)
    assert (ds.task, ds.feature_kinds) == (task, ("number", "category", "number"))
    train, holdout = split_holdout(ds, 0.25, seed=1)
    trained = train_family(train, FAST, seed=1)
    again = train_family(train, FAST, seed=1)
    assert sha(trained.artifact) == sha(again.artifact)
    model = load_model(trained.artifact, trained.format, sha(trained.artifact))
    assert (model.task, model.kinds) == (task, ds.feature_kinds)
    metrics = evaluate(model, holdout)
    assert set(METRICS_BY_TASK[task]) <= set(metrics)
    metric = DEFAULT_METRIC[task]
    ours = row_losses_of(model, holdout, metric)
    prior, _ = prior_row_losses(holdout, metric)
    # the category carries the signal: a fitted model beats knowing only the label distribution
    assert summarise(metric, ours) < 0.5 * summarise(metric, prior)
    assert summarise(metric, ours) == pytest.approx(metrics[metric])
    if task == "multiclass":
        assert model.classes == ("high", "low", "mid") and metrics["accuracy"] > 0.8
    if task == "regression":
        assert metrics["r2"] > 0.8


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_a_served_model_answers_missing_values_and_unseen_categories(task):
    trained = train_family(tabular(task, rows=400), FAST, seed=2)
    served = serve_artifact(
        trained.artifact,
        version=1,
        artifact_format=trained.format,
        sha256=sha(trained.artifact),
        feature_names=("age", "city", "income"),
    )
    X = np.array([[41.0, "paris", np.nan], [20.0, None, 3.0], [30.0, "atlantis", 1.0]], object)
    out = served.score(X)
    records = out.records()
    assert len(records) == 3
    if task == "regression":
        assert all(r["label"] is None and np.isfinite(r["value"]) for r in records)
    elif task == "multiclass":
        for r in records:
            assert r["label"] in ("low", "mid", "high")
            assert sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-3)
            assert r["score"] == max(r["probabilities"].values())
    else:
        assert [r["label"] for r in records] == [int(s >= 0.5) for s in out.scores]


def test_auto_chooses_per_task_and_says_why():
    trained = train_family(tabular("regression", rows=300), {}, seed=0)
    selection = trained.selection
    assert selection["metric"] == "rmse"
    assert [c["family"] for c in selection["candidates"]] == ["linear", "sklearn"]
    assert "linear" in selection["reason"] and "logreg takes binary labels" in selection["reason"]
    assert selection["chosen"] in ("linear", "sklearn")


@pytest.mark.parametrize("family", ["logreg", "river", "lightgbm"])
def test_families_that_cannot_take_the_data_say_what_can(family):
    with pytest.raises((ValueError, FamilyError), match="sklearn"):
        train_family(tabular("multiclass", rows=120), {"family": family}, seed=0)


@pytest.mark.parametrize("family", ["lightgbm", "xgboost"])
@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_boosters_learn_multiclass_and_regression_over_numbers(family, task):
    ds = tabular(task, rows=400).select(("age", "income"))
    trained = train_family(ds, {"family": family, "n_estimators": 20}, seed=0)
    metrics = evaluate(trained.model, ds)
    assert set(METRICS_BY_TASK[task]) <= set(metrics)


def _pipeline_onnx(task: str) -> tuple[bytes, Dataset]:
    """A scikit-learn pipeline trained elsewhere over a string column, exported by skl2onnx
    with one input per column, as an outside user would."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    ds = tabular(task, rows=300).select(("age", "city"))
    X = ds.X.copy()
    X[:, 1] = ["" if v is None else v for v in X[:, 1]]
    est = RandomForestRegressor(10) if task == "regression" else RandomForestClassifier(10)
    columns = ColumnTransformer(
        [("n", "passthrough", [0]), ("c", OneHotEncoder(handle_unknown="ignore"), [1])]
    )
    pipe = Pipeline([("columns", columns), ("model", est)]).fit(X, ds.y)
    types = [("age", FloatTensorType([None, 1])), ("city", StringTensorType([None, 1]))]
    options = None if task == "regression" else {id(pipe): {"zipmap": False}}
    graph = to_onnx(pipe, initial_types=types, options=options, target_opset=17)
    return graph.SerializeToString(), ds


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_a_pipeline_from_outside_with_a_string_column_imports_with_its_task(task):
    data, ds = _pipeline_onnx(task)
    classes = ("high", "low", "mid") if task == "multiclass" else ()
    artifact = import_onnx(data, feature_names=("age", "city"), classes=classes)
    model = load_onnx(artifact)
    assert (model.task, model.classes, model.kinds) == (task, classes, ("number", "category"))
    metrics = evaluate(model, ds)
    assert metrics["accuracy" if task == "multiclass" else "r2"] > 0.8
    with pytest.raises(ArtifactError, match="one input per feature"):
        import_onnx(data, feature_names=("age", "town"))
    if task == "multiclass":
        with pytest.raises(ArtifactError, match="3 class probabilities"):
            import_onnx(data, feature_names=("age", "city"), classes=("a", "b"))


def test_a_dataset_told_a_feature_may_be_missing_gets_a_model_that_takes_it():
    """A retrain of a champion that takes nulls, on rows that happen to have none: the
    signature keeps the feature nullable and the model imputes it (logreg cannot: auto swaps
    in linear)."""
    import dataclasses

    ds = tabular("binary", rows=300).select(("age", "city"))
    complete = ds.take(np.asarray([i for i in range(ds.rows) if ds.X[i, 1] is not None]))
    assert complete.complete and not complete.signature()["features"][1]["nullable"]
    told = dataclasses.replace(complete, nullable=(True, True))
    assert [f["nullable"] for f in told.signature()["features"]] == [True, True]
    trained = train_family(told, {"family": "sklearn", "n_estimators": 10}, seed=0)
    X = np.array([[np.nan, None], [30.0, "lyon"]], dtype=object)
    out = trained.model.predict_proba(X)
    assert np.isfinite(out).all()
    numbers = dataclasses.replace(complete.select(("age",)), nullable=(True,))
    selection = train_family(numbers, {}, seed=0).selection
    assert [c["family"] for c in selection["candidates"]] == ["linear", "sklearn"]
