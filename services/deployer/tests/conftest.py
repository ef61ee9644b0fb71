"""Shared fixtures for the deployer's tests: synthetic data, trained models, a step clock."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from modelbus_contracts import ArtifactRef, DatasetRef, Lineage, ModelRegistered, ModelSummary
from modelbus_deployer.adapters import ObjectStoreModels
from modelbus_deployer.config import DeployerSettings
from modelbus_deployer.service import DeployerService
from modelbus_deployer.testing import MemoryDecisionStore
from modelbus_ml import Dataset, LogisticModel, train_logreg
from modelbus_platform.stores import sha256_hex
from modelbus_platform.testing import InlineRelay, MemoryObjectStore, RecordingPublisher

FEATURES = ("x1", "x2", "x3")


def synthetic(rows: int, seed: int, flip: bool = False) -> Dataset:
    """Labels follow a noisy linear rule; ``flip`` inverts them (a model that learns garbage)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, len(FEATURES)))
    logits = 2.0 * X[:, 0] - 1.5 * X[:, 1] + 0.3 * rng.normal(size=rows)
    y = (logits > 0).astype(np.int8)
    if flip:
        y = 1 - y
    return Dataset(FEATURES, X, y)


@dataclass
class Models:
    good: LogisticModel
    bad: LogisticModel
    holdout: Dataset


@pytest.fixture(scope="session")
def models() -> Models:
    train = synthetic(600, seed=1)
    return Models(
        good=train_logreg(train, {"epochs": 150}, seed=0),
        bad=train_logreg(synthetic(600, seed=2, flip=True), {"epochs": 150}, seed=0),
        holdout=synthetic(300, seed=3),
    )


class StepClock:
    """Every call advances ``step_ms``: each timed predict takes exactly ``step_ms``."""

    def __init__(self, step_ms: float) -> None:
        self.step_s = step_ms / 1000.0
        self.t = 0.0

    def __call__(self) -> float:
        self.t += self.step_s
        return self.t


@pytest.fixture
def fast_clock() -> StepClock:
    return StepClock(0.05)


@pytest.fixture
def step_clock() -> type[StepClock]:
    return StepClock


MODEL = "churn"


class FlakyPublisher(RecordingPublisher):
    """Fails the first ``failures`` publishes: a broker outage after the decision was stored."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def publish_record(self, record) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("broker down")
        await super().publish_record(record)


class World:
    def __init__(self, models, settings: DeployerSettings | None = None) -> None:
        self.store = MemoryObjectStore()
        self.decisions = MemoryDecisionStore()
        self.publisher = RecordingPublisher()
        self.models = models
        self.settings = settings or DeployerSettings()
        self.clock = StepClock(0.05)

    def relay(self, publisher=None) -> InlineRelay:
        """Publishes the decisions' events at once (to ``publisher``, else the world's)."""
        return InlineRelay([self.decisions.outbox], publisher or self.publisher)

    def service(self, publisher=None) -> DeployerService:
        return DeployerService(
            settings=self.settings,
            decisions=self.decisions,
            models=ObjectStoreModels(self.store),
            events=self.relay(publisher),
            clock=self.clock,
        )

    async def artifact(self, model) -> ArtifactRef:
        data = model.to_bytes()
        digest = sha256_hex(data)
        await self.store.put(f"artifacts/{MODEL}/{digest}.json", data)
        return ArtifactRef(
            uri=f"artifacts/{MODEL}/{digest}.json", sha256=digest, size_bytes=len(data)
        )

    async def holdout(self) -> DatasetRef:
        data = self.models.holdout.to_csv_bytes()
        digest = sha256_hex(data)
        await self.store.put(f"datasets/{MODEL}/{digest}.csv", data)
        return DatasetRef(
            uri=f"datasets/{MODEL}/{digest}.csv", sha256=digest, rows=self.models.holdout.rows
        )

    async def registered(self, model, version: int = 1, champion=None) -> ModelRegistered:
        holdout = await self.holdout()
        champion_summary = None
        if champion is not None:
            champion_model, champion_version = champion
            champion_summary = ModelSummary(
                version=champion_version,
                artifact=await self.artifact(champion_model),
                feature_names=list(champion_model.feature_names),
            )
        return ModelRegistered(
            producer="registry",
            model_name=MODEL,
            version=version,
            run_id=f"run-{version}",
            artifact=await self.artifact(model),
            feature_names=list(model.feature_names),
            metrics={"auc": 0.9},
            lineage=Lineage(
                dataset=holdout, holdout=holdout, seed=0, code_version="t", trigger="api"
            ),
            champion=champion_summary,
        )


@pytest.fixture
def make_world(models):
    return lambda settings=None: World(models, settings)


@pytest.fixture
def world(make_world) -> World:
    return make_world()


@pytest.fixture
def flaky_publisher() -> type[FlakyPublisher]:
    return FlakyPublisher


@pytest.fixture
def make_dataset():
    return synthetic
