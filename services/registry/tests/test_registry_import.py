"""Bring your own model: a classifier trained elsewhere, exported to ONNX, registered through
the registry's API; checked without running code, judged on a hold-out, then a version like any
other (ModelRegistered, so the deployer's gates apply)."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from skl2onnx import to_onnx
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from modelbus_contracts import ModelRegistered
from modelbus_contracts.api import VersionView
from modelbus_embedded.testing import service_app
from modelbus_ml import Dataset, load_model
from modelbus_platform.artifacts import ArtifactTrust
from modelbus_platform.settings import ServiceSettings
from modelbus_platform.signing import keypair
from modelbus_platform.stores import sha256_hex
from modelbus_registry.api import build_router

MODEL = "byo"
NAMES = ["age", "salary", "visits"]
ONNX = {"content-type": "application/octet-stream"}


def data(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = np.c_[rng.uniform(18, 80, rows), rng.uniform(1e4, 2e5, rows), rng.poisson(3, rows)]
    y = ((X[:, 0] > 45) ^ (X[:, 1] > 1e5)).astype(np.int64)
    return X, y


def exported(estimator, zipmap: bool = False, rows: int = 600) -> tuple[bytes, object]:
    X, y = data(rows, 1)
    estimator.fit(X, y)
    graph = to_onnx(
        estimator, X[:1].astype(np.float32), options={id(estimator): {"zipmap": zipmap}}
    )
    return graph.SerializeToString(), estimator


async def put_holdout(store, rows: int = 300, seed: int = 2, names=NAMES) -> str:
    X, y = data(rows, seed)
    csv = Dataset(tuple(names), X.astype(np.float64), y.astype(np.int8)).to_csv_bytes()
    key = f"datasets/{MODEL}/{sha256_hex(csv)}.csv"
    await store.put(key, csv, "text/csv")
    return key


@pytest.fixture
async def client(wired):
    app = service_app(build_router(audit_limit=50), context=wired.service)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://r") as http:
        yield http


def query(**extra) -> dict:
    return {"feature_names": NAMES, **extra}


async def test_an_onnx_model_is_registered_judged_and_served_like_a_trained_one(client, wired):
    private, public = keypair()  # the registry signs what it imports, and trusts itself
    wired.service.trust = ArtifactTrust.from_settings(
        ServiceSettings(
            service_name="registry", signing_key=private, trusted_keys=f'{{"registry": "{public}"}}'
        )
    )
    body, forest = exported(RandomForestClassifier(n_estimators=20, random_state=0))
    holdout = await put_holdout(wired.store)
    response = await client.post(
        f"/models/{MODEL}/versions",
        content=body,
        headers={**ONNX, "X-Actor": "alice"},
        params=query(holdout_uri=f"s3://modelbus/{holdout}", source="notebook 42"),
    )
    assert response.status_code == 201, response.text
    view = VersionView.model_validate(response.json())
    assert (view.version, view.artifact.format, view.feature_names) == (
        1,
        "modelbus.onnx.v1",
        NAMES,
    )
    assert view.lineage.trigger == "import" and view.lineage.params["imported"] is True
    assert view.lineage.holdout.uri == holdout and view.lineage.holdout.rows == 300
    assert view.metrics["auc"] > 0.95 and view.metrics["rows"] == 300
    assert set(view.reference) == set(NAMES)
    [registered] = wired.published.of(ModelRegistered)
    assert registered.version == 1 and registered.artifact == view.artifact
    assert view.artifact.signature.signer == "registry"
    assert wired.service.trust.problem(view.artifact) is None
    # what is served is the same model: same probabilities as the estimator that was exported
    stored = await wired.store.get(view.artifact.uri)
    model = load_model(stored, view.artifact.format, view.artifact.sha256)
    X, _ = data(50, 9)
    np.testing.assert_allclose(
        model.predict_proba(X), forest.predict_proba(X.astype(np.float32))[:, 1], atol=1e-5
    )
    artifact = await client.get(f"/models/{MODEL}/versions/1/artifact")
    assert artifact.headers["content-type"] == "application/octet-stream"
    assert artifact.content == stored
    audit = [r.action for r in await wired.service.audit(MODEL, 10)]
    assert "registered" in audit

    again = await client.post(
        f"/models/{MODEL}/versions", content=body, headers=ONNX, params=query(holdout_uri=holdout)
    )
    assert again.status_code == 200 and again.json()["version"] == 1
    assert len(wired.published.of(ModelRegistered)) == 1, "the same bytes: one version"


async def test_a_later_import_is_judged_on_the_champions_holdout(client, wired, mk):
    body, _ = exported(make_pipeline(StandardScaler(), LogisticRegression()))
    holdout = await put_holdout(wired.store)
    first = await client.post(
        f"/models/{MODEL}/versions", content=body, headers=ONNX, params=query(holdout_uri=holdout)
    )
    assert first.status_code == 201
    await wired.service.record_evaluation(mk.evaluated(MODEL, 1, None))
    body2, _ = exported(RandomForestClassifier(n_estimators=10, random_state=1))
    second = await client.post(
        f"/models/{MODEL}/versions", content=body2, headers=ONNX, params=query()
    )
    assert second.status_code == 201, second.text
    view = VersionView.model_validate(second.json())
    assert view.version == 2 and view.lineage.holdout.uri == holdout
    [_, registered] = wired.published.of(ModelRegistered)
    assert registered.champion is not None and registered.champion.version == 1


@pytest.mark.parametrize(
    "case, status, reason, words",
    [
        ("zipmap", 422, "import_rejected", "zipmap"),
        ("garbage", 422, "import_rejected", "ONNX"),
        ("features", 422, "import_rejected", "3 features, 2 feature names"),
        ("first_without_holdout", 422, "import_rejected", "first model needs a hold-out"),
        ("holdout_missing", 422, "import_rejected", "not found"),
        ("holdout_columns", 422, "import_rejected", "no column for the features ['visits']"),
        ("content_type", 415, "unsupported_media_type", "ONNX"),
        ("bad_name", 422, "validation_error", "name"),
        ("no_features", 422, "import_rejected", "feature_names (or a signature) is required"),
        ("bad_signature", 422, "validation_error", "signature"),
        ("nul_feature", 422, "import_rejected", "holds a control character"),
        ("nul_signature", 422, "import_rejected", "holds a control character"),
    ],
)
async def test_bad_imports_are_refused_with_a_reason(client, wired, case, status, reason, words):
    body, _ = exported(RandomForestClassifier(n_estimators=5, random_state=0), rows=200)
    holdout = await put_holdout(wired.store)
    name, headers, params = MODEL, ONNX, query(holdout_uri=holdout)
    if case == "zipmap":
        body, _ = exported(RandomForestClassifier(n_estimators=5), zipmap=True, rows=200)
    elif case == "garbage":
        body = b"\x08\x07not really an onnx graph" * 20
    elif case == "features":
        params = {"feature_names": NAMES[:2], "holdout_uri": holdout}
    elif case == "first_without_holdout":
        params = query()
    elif case == "holdout_missing":
        params = query(holdout_uri="datasets/byo/none.csv")
    elif case == "holdout_columns":
        params = query(holdout_uri=await put_holdout(wired.store, names=["age", "salary", "v"]))
    elif case == "content_type":
        headers = {"content-type": "application/json"}
    elif case == "bad_name":
        name = "bad name!"
    elif case == "no_features":
        params = {"holdout_uri": holdout}
    elif case == "bad_signature":
        params = {"holdout_uri": holdout, "signature": '{"features": [], "task": "ordinal"}'}
    elif case == "nul_feature":
        params = {"feature_names": [NAMES[0], "in\x00come", NAMES[2]], "holdout_uri": holdout}
    elif case == "nul_signature":
        features = [{"name": n} for n in (NAMES[0], "in\x00come", NAMES[2])]
        params = {"holdout_uri": holdout, "signature": json.dumps({"features": features})}
    response = await client.post(
        f"/models/{name}/versions", content=body, headers=headers, params=params
    )
    assert response.status_code == status, response.text
    assert response.json()["reason"] == reason
    assert words in response.text
    assert wired.published.of(ModelRegistered) == []


@pytest.mark.parametrize("library", ["lightgbm", "xgboost"])
async def test_lightgbm_and_xgboost_models_converted_by_onnxmltools_are_imported(
    client, wired, library
):
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    X, y = data(600, 1)
    initial = [("input", FloatTensorType([None, 3]))]
    if library == "lightgbm":
        from lightgbm import LGBMClassifier

        model = LGBMClassifier(n_estimators=30, verbose=-1).fit(X.astype(np.float32), y)
        graph = onnxmltools.convert_lightgbm(model, initial_types=initial, zipmap=False)
    else:
        from xgboost import XGBClassifier

        model = XGBClassifier(n_estimators=30, max_depth=4).fit(X.astype(np.float32), y)
        graph = onnxmltools.convert_xgboost(model, initial_types=initial)
    holdout = await put_holdout(wired.store)
    response = await client.post(
        f"/models/{MODEL}/versions",
        content=graph.SerializeToString(),
        headers=ONNX,
        params=query(holdout_uri=holdout, source=library),
    )
    assert response.status_code == 201, response.text
    view = VersionView.model_validate(response.json())
    stored = await wired.store.get(view.artifact.uri)
    served = load_model(stored, view.artifact.format, view.artifact.sha256)
    Xt, _ = data(40, 5)
    np.testing.assert_allclose(
        served.predict_proba(Xt), model.predict_proba(Xt.astype(np.float32))[:, 1], atol=1e-4
    )
    assert view.metrics["accuracy"] > 0.9


def mlflow_zip(
    onnx_bytes: bytes | None,
    *,
    flavors: dict | None = None,
    inputs: list | None = None,
    folder: str = "model",
) -> bytes:
    """A zipped MLflow model folder, as ``mlflow.onnx.log_model`` writes it."""
    import io
    import json as jsonlib
    import zipfile

    import yaml

    spec = {
        "flavors": flavors or {"onnx": {"data": "model.onnx", "onnx_version": "1.17.0"}},
        "mlflow_version": "2.19.0",
        "run_id": "0123456789abcdef",
    }
    if inputs is not None:
        spec["signature"] = {"inputs": jsonlib.dumps(inputs), "outputs": "[]"}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{folder}/MLmodel", yaml.safe_dump(spec))
        if onnx_bytes is not None:
            archive.writestr(f"{folder}/model.onnx", onnx_bytes)
    return buffer.getvalue()


COLUMNS = [{"type": "double", "name": n, "required": True} for n in NAMES]
ZIP = {"content-type": "application/zip"}


async def test_an_mlflow_model_with_an_onnx_flavor_is_imported_with_its_signature(client, wired):
    body, forest = exported(RandomForestClassifier(n_estimators=10, random_state=0))
    holdout = await put_holdout(wired.store)
    response = await client.post(
        f"/models/{MODEL}/versions",
        content=mlflow_zip(body, inputs=COLUMNS),
        headers=ZIP,
        params={"holdout_uri": holdout},  # no feature_names: the signature names them
    )
    assert response.status_code == 201, response.text
    view = VersionView.model_validate(response.json())
    assert view.feature_names == NAMES
    assert view.lineage.params["source"] == "mlflow 0123456789abcdef"
    stored = await wired.store.get(view.artifact.uri)
    model = load_model(stored, view.artifact.format, view.artifact.sha256)
    X, _ = data(20, 4)
    np.testing.assert_allclose(
        model.predict_proba(X), forest.predict_proba(X.astype(np.float32))[:, 1], atol=1e-5
    )


@pytest.mark.parametrize(
    "case, words",
    [
        ("pickle_flavor", "sklearn flavor is a pickle"),
        ("string_column", "the signature says 'visits' is a category, the model takes a number"),
        ("boolean_column", "inputs ['visits (boolean)'] of a type modelbus cannot serve"),
        ("escaping_data", "outside the model folder"),
        ("missing_data", "not in the archive"),
        ("no_mlmodel", "no MLmodel file"),
        ("not_a_zip", "not a zip archive"),
        ("names_disagree", "differ from the MLflow signature"),
        ("tensor_signature", "give feature_names"),
    ],
)
async def test_bad_mlflow_models_are_refused_with_the_way_out(client, wired, case, words):
    body, _ = exported(RandomForestClassifier(n_estimators=5, random_state=0), rows=200)
    holdout = await put_holdout(wired.store)
    params: dict = {"holdout_uri": holdout}
    content = mlflow_zip(body, inputs=COLUMNS)
    if case == "pickle_flavor":
        flavors = {"sklearn": {"pickled_model": "model.pkl"}, "python_function": {}}
        content = mlflow_zip(None, flavors=flavors, inputs=COLUMNS)
    elif case == "string_column":
        content = mlflow_zip(body, inputs=[*COLUMNS[:2], {"type": "string", "name": "visits"}])
    elif case == "boolean_column":
        content = mlflow_zip(body, inputs=[*COLUMNS[:2], {"type": "boolean", "name": "visits"}])
    elif case == "escaping_data":
        content = mlflow_zip(body, flavors={"onnx": {"data": "../../etc/passwd"}})
    elif case == "missing_data":
        content = mlflow_zip(None, inputs=COLUMNS)
    elif case == "no_mlmodel":
        import io
        import zipfile

        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("model/model.onnx", body)
        content = buffer.getvalue()
    elif case == "not_a_zip":
        content = b"PK\x03\x04 but not really"
    elif case == "names_disagree":
        params["feature_names"] = ["a", "b", "c"]
    elif case == "tensor_signature":
        tensor = {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 3]}}
        content = mlflow_zip(body, inputs=[tensor])
    response = await client.post(
        f"/models/{MODEL}/versions", content=content, headers=ZIP, params=params
    )
    assert response.status_code == 422, response.text
    assert response.json()["reason"] == "import_rejected"
    assert words in response.json()["error"]
    assert wired.published.of(ModelRegistered) == []


async def test_an_artifact_replaced_in_the_store_is_never_overwritten_by_an_import(client, wired):
    """Artifacts are write-once: bytes replaced under an imported artifact's sha256 key make the
    next import of those bytes a 409 (artifact_conflict), and the store keeps what it holds."""
    body, _ = exported(make_pipeline(StandardScaler(), LogisticRegression()))
    holdout = await put_holdout(wired.store)
    params = query(holdout_uri=holdout)
    first = await client.post(
        f"/models/{MODEL}/versions", content=body, headers=ONNX, params=params
    )
    assert first.status_code == 201
    uri = first.json()["artifact"]["uri"]
    await wired.store.put(uri, b"tampered")

    again = await client.post(
        f"/models/{MODEL}/versions", content=body, headers=ONNX, params=params
    )
    assert again.status_code == 409, again.text
    assert again.json()["reason"] == "artifact_conflict" and "write-once" in again.json()["error"]
    assert await wired.store.get(uri) == b"tampered"
    assert len(wired.published.of(ModelRegistered)) == 1


def test_the_import_query_bounds_fit_in_a_url_the_server_reads():
    """Each query parameter at its documented bound (ASCII) stays under the 64 KiB the HTTP
    server reads: the fuzzer sent the 100_000-character signature and the 10_000 feature names
    documented before, and the server refused them with a plain-text 400 no route documents."""
    app = service_app(build_router())
    operation = app.openapi()["paths"]["/models/{name}/versions"]["post"]
    for parameter in operation["parameters"]:
        for bound in parameter["schema"].get("anyOf", [parameter["schema"]]):
            one = f"&{parameter['name']}=a"
            longest = max(bound.get("maxItems", 0) * len(one), len(one) + bound.get("maxLength", 0))
            assert longest < 60 * 1024, (parameter["name"], longest)
