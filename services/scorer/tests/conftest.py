"""Fixtures for the scorer tests. Tiny models, their artifacts and registry records are the
shared ones (``modelbus_embedded.testing``; fixtures ``make_model``, ``publish_artifact``);
``task_models`` are small scikit-learn models (ONNX) of every task over a number and a nullable
category, trained once per session."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from modelbus_contracts import Signature
from modelbus_contracts.api import VersionView
from modelbus_embedded.testing import version_view
from modelbus_ml.dataset import Dataset, from_rows
from modelbus_ml.families import Trained, train_family
from modelbus_platform.stores import ObjectStore

CITY_SHIFT = {"paris": 2.0, "lyon": 0.0, "nice": -2.0}


@pytest.fixture
def make_view() -> Callable[..., VersionView]:
    return version_view


def city_dataset(task: str, rows: int = 240, seed: int = 0) -> Dataset:
    """``age`` (a number) and ``city`` (a category, one row in ten missing) -> a class
    (multiclass: low/mid/high), a value (regression) or 0/1 (binary)."""
    rng = np.random.default_rng(seed)
    records, labels = [], []
    for i in range(rows):
        age, city = float(rng.uniform(20, 60)), str(rng.choice(list(CITY_SHIFT)))
        records.append({"age": age, "city": None if i % 10 == 0 else city})
        s = age / 10 + CITY_SHIFT[city]
        if task == "multiclass":
            labels.append(("low", "mid", "high")[min(2, max(0, int((s - 2) // 1.5)))])
        elif task == "regression":
            labels.append(3 * s)
        else:
            labels.append(int(s > 5))
    return from_rows(["age", "city"], records, labels, task=task)


@pytest.fixture(scope="session")
def task_models() -> dict[str, tuple[Trained, Dataset]]:
    """Per task, a trained sklearn model (10 trees) and its dataset."""
    models = {}
    for task in ("binary", "multiclass", "regression"):
        ds = city_dataset(task)
        models[task] = (train_family(ds, {"family": "sklearn", "n_estimators": 10}, 0), ds)
    return models


async def put_trained(
    store: ObjectStore, name: str, version: int, trained: Trained, ds: Dataset
) -> VersionView:
    """A trained model's artifact in ``store`` and its registry record, with its signature."""
    view = version_view(name, version, trained.artifact, ds.feature_names)
    artifact = view.artifact.model_copy(update={"format": trained.format})
    view = view.model_copy(update={"artifact": artifact, "signature": Signature(**ds.signature())})
    await store.put(view.artifact.uri, trained.artifact)
    return view
