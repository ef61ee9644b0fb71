"""Fixtures for the batch tests: tiny models, their artifacts in a store, registry records."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import numpy as np
import pytest

from modelbus_contracts import ArtifactRef, DatasetRef, Lineage
from modelbus_contracts.api import VersionView
from modelbus_ml import LogisticModel
from modelbus_platform.stores import ObjectStore, sha256_hex

FEATURES = ("age", "income")
ZERO_SHA = "0" * 64


def tiny_model(
    names: tuple[str, ...] = FEATURES, coef: list[float] | None = None, intercept: float = 0.0
) -> LogisticModel:
    k = len(names)
    return LogisticModel(
        feature_names=names,
        coef=np.asarray(coef if coef is not None else [1.0] * k, dtype=np.float64),
        intercept=intercept,
        mean=np.zeros(k),
        scale=np.ones(k),
        threshold=0.5,
    )


def version_view(
    name: str, version: int, data: bytes, names: tuple[str, ...] = FEATURES
) -> VersionView:
    digest = sha256_hex(data)
    ref = DatasetRef(uri=f"datasets/{name}/{ZERO_SHA}.csv", sha256=ZERO_SHA, rows=10)
    return VersionView(
        model_name=name,
        version=version,
        run_id=f"run-{version}",
        artifact=ArtifactRef(
            uri=f"artifacts/{name}/{digest}.json", sha256=digest, size_bytes=len(data)
        ),
        feature_names=list(names),
        lineage=Lineage(dataset=ref, holdout=ref, seed=0, code_version="test", trigger="manual"),
        status="champion",
        created_at=datetime.now(UTC),
    )


Publish = Callable[..., Awaitable[VersionView]]


@pytest.fixture
def publish_artifact() -> Publish:
    """Put a model's artifact in ``store`` and return the registry record that points at it."""

    async def put(
        store: ObjectStore, name: str, version: int, model: LogisticModel | None = None
    ) -> VersionView:
        payload = (model or tiny_model()).to_bytes()
        view = version_view(name, version, payload)
        await store.put(view.artifact.uri, payload)
        return view

    return put


@pytest.fixture
def make_model() -> Callable[..., LogisticModel]:
    return tiny_model
