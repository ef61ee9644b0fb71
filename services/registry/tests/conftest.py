"""Fixtures for the registry's tests: a tiny real artifact, event builders, and a service wired
to in-memory fakes (repository, object store folder, recording publisher)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache

import pytest

from modelbus_contracts import (
    ArtifactRef,
    DatasetRef,
    GateResult,
    Lineage,
    ModelEvaluated,
    ModelTrained,
)
from modelbus_ml import from_rows, train_logreg
from modelbus_platform.stores import LocalObjectStore, ObjectStore, sha256_hex
from modelbus_platform.testing import InlineRelay, RecordingPublisher
from modelbus_registry.service import RegistryService
from modelbus_registry.testing import MemoryRegistryRepository

FEATURES = ["x1", "x2"]


@cache
def artifact_bytes(seed: int = 0) -> bytes:
    rows = [{"x1": float(i % 7), "x2": float((i * 3) % 5)} for i in range(40)]
    labels = [1 if r["x1"] + r["x2"] > 5 else 0 for r in rows]
    return train_logreg(from_rows(FEATURES, rows, labels), {"epochs": 30}, seed=seed).to_bytes()


def artifact_ref(model: str, data: bytes) -> ArtifactRef:
    digest = sha256_hex(data)
    return ArtifactRef(uri=f"artifacts/{model}/{digest}.json", sha256=digest, size_bytes=len(data))


async def put_artifact(store: ObjectStore, model: str, seed: int = 0) -> ArtifactRef:
    data = artifact_bytes(seed)
    ref = artifact_ref(model, data)
    await store.put(ref.uri, data, "application/json")
    return ref


def dataset_ref(tag: str, rows: int = 40) -> DatasetRef:
    digest = sha256_hex(tag.encode())
    return DatasetRef(uri=f"datasets/{tag}/{digest}.csv", sha256=digest, rows=rows)


def trained(model: str, ref: ArtifactRef, run_id: str | None = None, auc: float = 0.8):
    return ModelTrained(
        producer="trainer",
        model_name=model,
        run_id=run_id or uuid.uuid4().hex,
        artifact=ref,
        feature_names=FEATURES,
        metrics={"auc": auc, "accuracy": 0.7},
        lineage=Lineage(
            dataset=dataset_ref(f"{model}-train"),
            holdout=dataset_ref(f"{model}-holdout", 10),
            params={"epochs": 30},
            seed=0,
            code_version="test",
            trigger="manual",
        ),
        training_seconds=0.1,
    )


def evaluated(
    model: str, version: int, champion: int | None, decision: str = "promote", cause=None
) -> ModelEvaluated:
    data = dict(
        model_name=model,
        version=version,
        champion_version=champion,
        decision=decision,
        reasons=[f"auc gate {'passed' if decision == 'promote' else 'failed'}"],
        gates=[
            GateResult(name="auc_delta", passed=decision == "promote", observed=0.05, threshold=0.0)
        ],
        holdout=dataset_ref(f"{model}-holdout", 10),
        challenger_metrics={"auc": 0.85},
        champion_metrics={"auc": 0.8} if champion else {},
    )
    if cause is not None:
        return cause.caused(ModelEvaluated, producer="deployer", **data)
    return ModelEvaluated(producer="deployer", **data)


class StepClock:
    """A clock that moves one second per call: ordering without sleeping."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@dataclass
class Wired:
    service: RegistryService
    repo: MemoryRegistryRepository
    store: LocalObjectStore
    published: RecordingPublisher


@pytest.fixture
def wired(tmp_path) -> Wired:
    repo = MemoryRegistryRepository()
    store = LocalObjectStore(tmp_path / "objects")
    published = RecordingPublisher()
    relay = InlineRelay([repo.outbox], published)
    service = RegistryService(repo, store, relay, clock=StepClock())
    return Wired(service, repo, store, published)


class Builders:
    """The helpers above, handed to tests as the ``mk`` fixture (test modules cannot import
    conftest under pytest's importlib mode)."""

    features = FEATURES
    artifact_bytes = staticmethod(artifact_bytes)
    artifact_ref = staticmethod(artifact_ref)
    put_artifact = staticmethod(put_artifact)
    dataset_ref = staticmethod(dataset_ref)
    trained = staticmethod(trained)
    evaluated = staticmethod(evaluated)
    clock = StepClock


@pytest.fixture
def mk() -> type[Builders]:
    return Builders
