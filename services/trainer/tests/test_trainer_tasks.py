"""Every task from collected feedback: predictions with a number and a category feature (some
missing) joined with multiclass or regression labels; the ModelTrained carries the signature
and the reference (category frequencies); a retrain keeps the champion's task, classes and
feature kinds."""

from __future__ import annotations

import uuid
from datetime import timedelta

import numpy as np
import pytest
from trainer_fixtures import T0, Harness

from modelbus_contracts import (
    ArtifactRef,
    DatasetRef,
    LabelObserved,
    Lineage,
    ModelTrained,
    PredictionMade,
    Signature,
    TrainingRequested,
)
from modelbus_contracts.api import VersionView
from modelbus_contracts.policy import ModelPolicyDoc, TrainingPolicy
from modelbus_trainer.domain import run_id_for

CITIES = ["lyon", "nice", "paris"]


def feedback(model: str, n: int, task: str, seed: int = 3):
    """Pairs of (prediction, label): age (a number), city (a category, every 9th missing)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        age, city = float(rng.uniform(18, 80)), str(rng.choice(CITIES))
        level = age / 20 + {"paris": 1.5, "lyon": 0.0, "nice": -1.0}[city]
        if task == "multiclass":
            label: object = "low" if level < 1.5 else "mid" if level < 3 else "high"
        else:
            label = round(3 * level + float(rng.normal(0, 0.1)), 6)
        pid = f"p-{uuid.uuid4().hex}"
        features = {"age": age, "city": None if i % 9 == 0 else city}
        prediction = PredictionMade(
            model_name=model,
            occurred_at=T0 + timedelta(milliseconds=i),
            prediction_id=pid,
            version=1,
            features=features,
            served_by="champion",
            latency_ms=1.0,
        )
        pairs.append((prediction, LabelObserved(model_name=model, prediction_id=pid, label=label)))
    return pairs


async def _train(h: Harness, model: str, **params) -> tuple[dict, ModelTrained | None]:
    event = TrainingRequested(model_name=model, params=params, seed=1)
    await h.service.on_training_requested(event)
    await h.service.drain(60)
    run = await h.runs.get(run_id_for(event.event_id))
    trained = [t for t in h.publisher.of(ModelTrained) if t.run_id == run["run_id"]]
    return run, (trained[0] if trained else None)


def champion_view(model: str, signature: Signature | None, version: int = 3) -> VersionView:
    ref = DatasetRef(uri="datasets/x.csv", sha256="0" * 64, rows=10)
    return VersionView(
        model_name=model,
        version=version,
        run_id="r",
        artifact=ArtifactRef(uri="a", sha256="0" * 64, size_bytes=1),
        feature_names=["age", "city"],
        lineage=Lineage(
            dataset=ref, holdout=ref, params={}, seed=0, code_version="t", trigger="manual"
        ),
        signature=signature,
        status="champion",
        created_at=T0,
    )


async def test_a_multiclass_model_is_trained_from_feedback_with_a_category_column():
    h = Harness()
    await h.add_feedback(feedback("m", 400, "multiclass"))
    run, trained = await _train(h, "m", family="sklearn", n_estimators=40)

    assert run["state"] == "succeeded", run["reason"]
    assert trained is not None and trained.signature is not None
    signature = trained.signature
    assert (signature.task, signature.classes) == ("multiclass", ["high", "low", "mid"])
    age, city = signature.features
    assert (age.name, age.kind, age.nullable) == ("age", "number", False)
    assert (city.kind, city.nullable, city.categories) == ("category", True, CITIES)
    reference = trained.reference["city"]
    assert reference.kind == "category" and set(reference.frequencies) == set(CITIES)
    assert sum(reference.frequencies.values()) == pytest.approx(1.0)
    assert 0.05 < reference.missing_rate < 0.2
    assert trained.reference["age"].kind == "number" and trained.reference["age"].count == 300
    assert {"accuracy", "log_loss", "brier", "macro_auc"} <= set(trained.metrics)
    assert trained.metrics["accuracy"] > 0.8
    assert "auc" not in trained.metrics
    assert trained.lineage.params["task"] == "multiclass"
    assert run["data_spec"]["task_from"] == "labels"
    assert run["signature"]["task"] == "multiclass"


async def test_a_regression_is_trained_from_feedback_and_its_run_reproduces():
    h = Harness()
    await h.add_feedback(feedback("r", 400, "regression"))
    run, trained = await _train(h, "r")  # auto: candidates per task

    assert run["state"] == "succeeded", run["reason"]
    assert trained is not None and trained.signature is not None
    assert trained.signature.task == "regression" and trained.signature.classes == []
    assert [f.kind for f in trained.signature.features] == ["number", "category"]
    assert {"rmse", "mae", "r2"} <= set(trained.metrics) and trained.metrics["r2"] > 0.8
    assert run["selection"]["chosen"] in {"linear", "sklearn"}

    outcome = await h.service.reproduce(run["run_id"])
    assert outcome is not None and outcome["matched"], outcome


async def test_a_retrain_keeps_the_champions_task_classes_and_kinds():
    """Labels 0, 1, 2 alone would read as a multiclass model over classes '0'..'2'; the
    champion is a regression over a category 'city' whose values look like numbers."""
    h = Harness()
    signature = Signature.model_validate(
        {
            "features": [{"name": "age"}, {"name": "city", "kind": "category"}],
            "task": "regression",
        }
    )
    h.registry.put(champion_view("m", signature), champion=True)
    pairs = []
    for prediction, label in feedback("m", 200, "regression"):
        city = prediction.features["city"]
        code = None if city is None else str(CITIES.index(city) + 10)  # "10", "11", "12"
        features = {**prediction.features, "city": code}
        whole = float(round(label.label) % 3)
        pairs.append(
            (
                prediction.model_copy(update={"features": features}),
                label.model_copy(update={"label": whole}),
            )
        )
    await h.add_feedback(pairs)
    run, trained = await _train(h, "m", family="linear")

    assert run["state"] == "succeeded", run["reason"]
    assert trained is not None and trained.signature is not None
    assert trained.signature.task == "regression"
    assert [f.kind for f in trained.signature.features] == ["number", "category"]
    assert trained.signature.features[1].categories == ["10", "11", "12"]
    assert run["data_spec"] == {
        "task": "regression",
        "task_from": "champion",
        "kinds": {"age": "number", "city": "category"},
        "classes": [],
        "champion_version": 3,
    }


async def test_a_multiclass_retrain_keeps_the_champions_classes_first():
    h = Harness()
    signature = Signature.model_validate(
        {
            "features": [{"name": "age"}, {"name": "city", "kind": "category"}],
            "task": "multiclass",
            "classes": ["mid", "low", "high", "gone"],
        }
    )
    h.registry.put(champion_view("m", signature), champion=True)
    await h.add_feedback(feedback("m", 300, "multiclass"))
    run, trained = await _train(h, "m", family="sklearn", n_estimators=20)

    assert run["state"] == "succeeded", run["reason"]
    assert run["data_spec"]["classes"] == ["mid", "low", "high", "gone"]
    assert trained is not None and trained.signature is not None
    # what the model learned, in its output order ("gone" has no rows)
    assert trained.signature.classes == ["mid", "low", "high"]


async def test_a_requested_task_other_than_the_champions_fails_the_run():
    h = Harness()
    h.registry.put(champion_view("m", None), champion=True)  # an older binary champion
    await h.add_feedback(feedback("m", 100, "regression"))
    run, trained = await _train(h, "m", task="regression")

    assert run["state"] == "failed" and trained is None
    assert "task 'regression' differs from the champion's 'binary' (v3)" in run["reason"]


async def test_the_training_policy_sets_the_task_of_a_first_model():
    h = Harness()
    h.registry.set_policy("c", ModelPolicyDoc(training=TrainingPolicy(task="regression")))
    pairs = [
        (p, lab.model_copy(update={"label": float(i % 4)}))
        for i, (p, lab) in enumerate(feedback("c", 200, "multiclass"))
    ]
    await h.add_feedback(pairs)
    run, trained = await _train(h, "c", family="linear")

    assert run["state"] == "succeeded", run["reason"]
    assert run["params"]["task"] == "regression"
    assert run["data_spec"]["task_from"] == "params"
    assert trained is not None and trained.signature is not None
    assert trained.signature.task == "regression"


def test_a_retrain_takes_nulls_where_the_champion_took_them():
    """The retrain's rows happen to have no missing value, the champion takes nulls for
    ``income``: the new version must take them too (its scorer would refuse them otherwise)."""
    from modelbus_contracts.events import FeatureSpec, Signature
    from modelbus_trainer.domain import data_spec, feedback_dataset, trained_signature

    champion = Signature(
        features=[
            FeatureSpec(name="age"),
            FeatureSpec(name="income", nullable=True),
            FeatureSpec(name="city", kind="category"),
        ],
        task="binary",
    )
    spec = data_spec({}, champion, champion_version=3)
    rng = np.random.default_rng(0)
    rows = [
        {
            "features": {"age": float(a), "income": float(b), "city": str(c)},
            "label": int(a > 0),
        }
        for a, b, c in zip(
            rng.normal(size=200), rng.normal(size=200), rng.choice(["x", "y"], 200), strict=True
        )
    ]
    ds = feedback_dataset(rows, spec)
    assert ds.complete and ds.may_miss
    from modelbus_ml import train_family

    trained = train_family(ds, {"family": "sklearn", "n_estimators": 5}, seed=0)
    signature = trained_signature(ds, trained.model)
    assert [f["nullable"] for f in signature["features"]] == [False, True, False]
