"""Loading a registry version to serve it: the artifact is fetched and sha256-verified, its
features must match the record, it is warmed up; every reason it cannot serve is LoadFailed."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from modelbus_contracts import ArtifactRef, DatasetRef, Lineage
from modelbus_contracts.api import VersionView
from modelbus_ml import LogisticModel
from modelbus_ml.serving import LoadFailed, serve_artifact
from modelbus_platform.artifacts import ArtifactTrust
from modelbus_platform.serving import load_version
from modelbus_platform.stores import sha256_hex
from modelbus_platform.testing import MemoryObjectStore

FEATURES = ("age", "income")


def model(names: tuple[str, ...] = FEATURES, coef: float = 1.0) -> LogisticModel:
    k = len(names)
    return LogisticModel(
        feature_names=names,
        coef=np.full(k, coef),
        intercept=0.0,
        mean=np.zeros(k),
        scale=np.ones(k),
        threshold=0.5,
    )


def view(data: bytes, *, features=FEATURES, fmt: str | None = None, sha: str | None = None):
    digest = sha or sha256_hex(data)
    ref = DatasetRef(uri="datasets/d.csv", sha256="0" * 64, rows=1)
    artifact = {"uri": f"artifacts/m/{digest}.json", "sha256": digest, "size_bytes": len(data)}
    if fmt is not None:
        artifact["format"] = fmt
    return VersionView(
        model_name="m",
        version=3,
        run_id="r",
        artifact=ArtifactRef(**artifact),
        feature_names=list(features),
        lineage=Lineage(dataset=ref, holdout=ref, seed=0, code_version="t", trigger="api"),
        status="champion",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


async def stored(data: bytes, **kwargs) -> tuple[MemoryObjectStore, VersionView]:
    store, record = MemoryObjectStore(), view(data, **kwargs)
    await store.put(record.artifact.uri, data)
    return store, record


async def test_a_good_version_is_loaded_verified_and_scores():
    data = model().to_bytes()
    store, record = await stored(data)
    served = await load_version(store, record, ArtifactTrust())
    assert (served.version, served.feature_names, served.sha256) == (3, FEATURES, sha256_hex(data))
    assert served.same_as(3, sha256_hex(data)) and not served.same_as(4, sha256_hex(data))
    out = served.score(np.array([[2.0, 0.0], [-2.0, 0.0]]))
    scores = out.scores
    assert out.labels.tolist() == [1, 0] and 0 < scores[1] < 0.5 < scores[0] < 1
    assert served.numeric and (served.task, served.kinds) == ("binary", ("number", "number"))


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("tampered", "integrity"),
        ("missing", "artifact missing"),
        ("unreadable", "ArtifactError"),
        ("wrong_features", "differ from the registry record"),
        ("unsupported", "unsupported artifact format"),
    ],
)
async def test_what_cannot_serve_is_load_failed(fault, message):
    data = model().to_bytes()
    if fault == "tampered":
        store, record = await stored(data)
        await store.put(record.artifact.uri, data + b" ")
    elif fault == "missing":
        store, record = MemoryObjectStore(), view(data)
    elif fault == "unreadable":
        store, record = await stored(b"not json at all")
    elif fault == "wrong_features":
        store, record = await stored(model(("a", "b")).to_bytes())
    else:
        store, record = await stored(data, fmt="onnx.v1")
    with pytest.raises(LoadFailed, match=message):
        await load_version(store, record, ArtifactTrust())


def test_a_model_that_fails_its_warm_up_is_load_failed(monkeypatch):
    class NaNModel:
        feature_names = FEATURES
        threshold = 0.5

        def predict_proba(self, X):
            return np.full(len(X), np.nan)

    monkeypatch.setattr("modelbus_ml.serving.load_model", lambda *args: NaNModel())
    data = model().to_bytes()
    with pytest.raises(LoadFailed, match="FloatingPointError"):
        serve_artifact(
            data,
            version=1,
            artifact_format="modelbus.logreg.v1",
            sha256=sha256_hex(data),
            feature_names=FEATURES,
        )
