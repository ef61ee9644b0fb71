"""Bring your own model of any task: scikit-learn pipelines over a number and a category column
(one-hot encoded), exported to ONNX with one input per feature, imported as a multiclass or a
regression version, judged on a hold-out with that category column, recorded with their
signature and served by it."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType, StringTensorType
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

from modelbus_contracts import ModelRegistered
from modelbus_contracts.api import VersionView
from modelbus_embedded.testing import service_app
from modelbus_ml import from_rows
from modelbus_ml.flavors import sha256_of
from modelbus_ml.serving import serve_artifact
from modelbus_platform.stores import sha256_hex
from modelbus_registry.api import build_router

MODEL = "byo-tasks"
NAMES = ["age", "city"]
CITIES = ["lyon", "nice", "paris"]
ONNX = {"content-type": "application/octet-stream"}


def rows(n: int, seed: int, missing: bool = False) -> tuple[list[dict], list[str], list[float]]:
    """Rows with a number and a category; a class (low/mid/high) and a value per row."""
    rng = np.random.default_rng(seed)
    features, classes, values = [], [], []
    for i in range(n):
        age, city = float(rng.uniform(18, 80)), str(rng.choice(CITIES))
        level = age / 20 + {"paris": 1.5, "lyon": 0.0, "nice": -1.0}[city]
        classes.append("low" if level < 1.5 else "mid" if level < 3 else "high")
        values.append(3 * level + float(rng.normal(0, 0.1)))
        features.append({"age": age, "city": None if missing and i % 10 == 0 else city})
    return features, classes, values


def matrix(features: list[dict]) -> np.ndarray:
    X = np.empty((len(features), 2), dtype=object)
    X[:, 0] = [f["age"] for f in features]
    X[:, 1] = ["" if f["city"] is None else f["city"] for f in features]
    return X


def pipeline(estimator) -> object:
    columns = ColumnTransformer(
        [
            ("numbers", SimpleImputer(strategy="median"), [0]),
            ("categories", OneHotEncoder(handle_unknown="ignore", sparse_output=False), [1]),
        ]
    )
    return make_pipeline(columns, estimator)


def exported(task: str) -> tuple[bytes, object]:
    """A fitted pipeline and its ONNX graph: one float input 'age', one string input 'city'."""
    features, classes, values = rows(600, 1)
    X = matrix(features)
    if task == "multiclass":
        estimator = RandomForestClassifier(n_estimators=30, random_state=0)
        fitted = pipeline(estimator).fit(X, classes)
        options = {id(estimator): {"zipmap": False}}
    else:
        estimator = RandomForestRegressor(n_estimators=30, random_state=0)
        fitted = pipeline(estimator).fit(X, values)
        options = None
    initial = [("age", FloatTensorType([None, 1])), ("city", StringTensorType([None, 1]))]
    graph = to_onnx(fitted, initial_types=initial, options=options, target_opset=17)
    return graph.SerializeToString(), fitted


async def put_holdout(store, task: str) -> str:
    features, classes, values = rows(300, 2, missing=True)
    labels = classes if task == "multiclass" else values
    csv = from_rows(NAMES, features, labels, task=task).to_csv_bytes()
    key = f"datasets/{MODEL}/{sha256_hex(csv)}.csv"
    await store.put(key, csv, "text/csv")
    return key


@pytest.fixture
async def client(wired):
    app = service_app(build_router(audit_limit=50), context=wired.service)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://r") as http:
        yield http


async def _served(wired, view: VersionView):
    stored = await wired.store.get(view.artifact.uri)
    return serve_artifact(
        stored,
        version=view.version,
        artifact_format=view.artifact.format,
        sha256=sha256_of(stored),
        feature_names=view.feature_names,
        signature=view.signature,
    )


async def test_a_multiclass_pipeline_with_a_category_column_is_judged_and_served(client, wired):
    body, fitted = exported("multiclass")
    holdout = await put_holdout(wired.store, "multiclass")
    classes = [str(c) for c in fitted.classes_]  # the order of its probabilities
    response = await client.post(
        f"/models/{MODEL}/versions",
        content=body,
        headers=ONNX,
        params={"feature_names": NAMES, "classes": classes, "holdout_uri": holdout},
    )
    assert response.status_code == 201, response.text
    view = VersionView.model_validate(response.json())
    signature = view.signature
    assert signature is not None
    assert (signature.task, signature.classes) == ("multiclass", ["high", "low", "mid"])
    age, city = signature.features
    assert (age.name, age.kind, age.nullable, age.categories) == ("age", "number", False, [])
    assert (city.kind, city.nullable, city.categories) == ("category", True, CITIES)
    assert view.metrics["rows"] == 300 and view.metrics["accuracy"] > 0.85
    assert {"log_loss", "brier", "macro_auc"} <= set(view.metrics)
    assert view.reference["city"].kind == "category"
    assert set(view.reference["city"].frequencies) == set(CITIES)
    [registered] = wired.published.of(ModelRegistered)
    assert registered.signature == signature

    served = await _served(wired, view)
    features, _, _ = rows(40, 7)
    X = np.array([[f["age"], f["city"]] for f in features], dtype=object)
    outputs = served.score(X)
    assert outputs.label_list() == list(fitted.predict(matrix(features)))
    expected = fitted.predict_proba(matrix(features))
    first = outputs.record(0)["probabilities"]
    assert first == pytest.approx(dict(zip(classes, expected[0], strict=True)), abs=1e-5)


async def test_a_regression_pipeline_with_a_category_column_is_judged_and_served(client, wired):
    body, fitted = exported("regression")
    holdout = await put_holdout(wired.store, "regression")
    signature = {
        "features": [{"name": "age"}, {"name": "city", "kind": "category"}],
        "task": "regression",
    }
    response = await client.post(
        f"/models/{MODEL}/versions",
        content=body,
        headers=ONNX,
        params={"signature": json.dumps(signature), "holdout_uri": holdout},
    )
    assert response.status_code == 201, response.text
    view = VersionView.model_validate(response.json())
    assert view.signature is not None and view.signature.task == "regression"
    assert view.signature.classes == []
    assert [f.kind for f in view.signature.features] == ["number", "category"]
    assert view.signature.features[1].nullable is True  # the hold-out has missing cities
    assert view.metrics["r2"] > 0.9 and view.metrics["rmse"] < 1.5
    assert view.lineage.params["task"] == "regression"

    served = await _served(wired, view)
    features, _, _ = rows(30, 8)
    X = np.array([[f["age"], f["city"]] for f in features], dtype=object)
    values = served.score(X).label_list()
    np.testing.assert_allclose(values, fitted.predict(matrix(features)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "params, words",
    [
        ({"feature_names": NAMES}, "give classes in the order of the model's probabilities"),
        (
            {
                "signature": json.dumps(
                    {"features": [{"name": "age"}, {"name": "city", "kind": "number"}]}
                )
            },
            "the signature says 'city' is a number, the model takes a category",
        ),
        ({"feature_names": NAMES, "task": "regression"}, "regression"),
    ],
)
async def test_an_import_that_does_not_fit_its_description_is_refused(client, wired, params, words):
    body, _ = exported("multiclass")
    holdout = await put_holdout(wired.store, "multiclass")
    response = await client.post(
        f"/models/{MODEL}/versions",
        content=body,
        headers=ONNX,
        params={**params, "holdout_uri": holdout},
    )
    assert response.status_code == 422, response.text
    assert response.json()["reason"] == "import_rejected"
    assert words in response.json()["error"]
    assert wired.published.of(ModelRegistered) == []


async def test_an_import_of_another_task_than_the_champions_is_refused(client, wired, mk):
    body, fitted = exported("multiclass")
    holdout = await put_holdout(wired.store, "multiclass")
    classes = [str(c) for c in fitted.classes_]
    first = await client.post(
        f"/models/{MODEL}/versions",
        content=body,
        headers=ONNX,
        params={"feature_names": NAMES, "classes": classes, "holdout_uri": holdout},
    )
    assert first.status_code == 201, first.text
    await wired.service.record_evaluation(mk.evaluated(MODEL, 1, None))

    regression, _ = exported("regression")
    other = await put_holdout(wired.store, "regression")
    response = await client.post(
        f"/models/{MODEL}/versions",
        content=regression,
        headers=ONNX,
        params={"feature_names": NAMES, "task": "regression", "holdout_uri": other},
    )
    assert response.status_code == 422, response.text
    assert (
        "the model is a regression model, the champion (v1) a multiclass one"
        in (response.json()["error"])
    )


def mlflow_zip(onnx_bytes: bytes, inputs: list[dict]) -> bytes:
    """A zipped MLflow model folder with an onnx flavor and a column signature."""
    import io
    import zipfile

    import yaml

    spec = {
        "flavors": {"onnx": {"data": "model.onnx"}},
        "signature": {"inputs": json.dumps(inputs), "outputs": "[]"},
        "run_id": "feedc0de",
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model/MLmodel", yaml.safe_dump(spec))
        archive.writestr("model/model.onnx", onnx_bytes)
    return buffer.getvalue()


async def test_an_mlflow_string_column_is_a_category_and_an_optional_one_nullable(client, wired):
    body, fitted = exported("multiclass")
    holdout = await put_holdout(wired.store, "multiclass")
    inputs = [
        {"type": "double", "name": "age", "required": False},
        {"type": "string", "name": "city"},
    ]
    response = await client.post(
        f"/models/{MODEL}/versions",
        content=mlflow_zip(body, inputs),
        headers={"content-type": "application/zip"},
        params={"classes": [str(c) for c in fitted.classes_], "holdout_uri": holdout},
    )
    assert response.status_code == 201, response.text
    view = VersionView.model_validate(response.json())
    assert view.signature is not None and view.feature_names == NAMES
    age, city = view.signature.features
    assert (age.kind, age.nullable) == ("number", True)  # "required": false
    assert (city.kind, city.categories) == ("category", CITIES)
    assert view.lineage.params["source"] == "mlflow feedc0de"
