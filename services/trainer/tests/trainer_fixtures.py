"""Shared helpers for the trainer tests: synthetic data, feedback events, a fake-backed service."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np

from modelbus_contracts import DriftDetected, LabelObserved, PredictionMade
from modelbus_ml import Dataset
from modelbus_platform.policies import Policies
from modelbus_platform.testing import (
    FakeRegistry,
    InlineRelay,
    MemoryObjectStore,
    RecordingPublisher,
)
from modelbus_trainer.config import TrainerSettings
from modelbus_trainer.service import TrainerService
from modelbus_trainer.testing import (
    MemoryFeedbackStore,
    MemoryLockStore,
    MemoryRunStore,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def make_dataset(rows: int = 200, seed: int = 0, names: tuple[str, ...] = ("x1", "x2")) -> Dataset:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, len(names)))
    logits = X @ np.linspace(1.5, -1.0, len(names)) + 0.2
    y = (rng.random(rows) < 1 / (1 + np.exp(-logits))).astype(np.int8)
    return Dataset(names, X, y)


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def feedback_events(
    model: str, n: int, at: datetime, seed: int = 1, served_by: str = "champion"
) -> list[tuple[PredictionMade, LabelObserved]]:
    ds = make_dataset(n, seed)
    pairs = []
    for i in range(n):
        pid = f"p-{uuid.uuid4().hex}"
        features = {name: float(ds.X[i, j]) for j, name in enumerate(ds.feature_names)}
        prediction = PredictionMade(
            model_name=model,
            occurred_at=at + timedelta(milliseconds=i),
            prediction_id=pid,
            version=1,
            features=features,
            score=0.5,
            label=1,
            served_by=served_by,
            latency_ms=1.0,
        )
        pairs.append(
            (prediction, LabelObserved(model_name=model, prediction_id=pid, label=int(ds.y[i])))
        )
    return pairs


def drift_event(model: str, detected_at: datetime, version: int = 1) -> DriftDetected:
    return DriftDetected(
        model_name=model,
        version=version,
        incident_id=f"inc-{uuid.uuid4().hex[:8]}",
        detector="adwin",
        feature="__error__",
        statistic=0.3,
        window_size=100,
        observations=500,
        detected_at=detected_at,
    )


class Harness:
    """A TrainerService on in-memory fakes."""

    def __init__(self, clock: Clock | None = None, **overrides: object) -> None:
        defaults: dict[str, object] = {
            "drift_min_rows": 40,
            "drift_poll_interval_s": 0.01,
            "drift_wait_timeout_s": 2.0,
            "code_version": "test",
        }
        self.settings = TrainerSettings(**{**defaults, **overrides})
        self.runs = MemoryRunStore()
        self.feedback = MemoryFeedbackStore()
        self.locks = MemoryLockStore()
        self.store = MemoryObjectStore()
        self.publisher = RecordingPublisher()
        self.clock = clock or Clock()
        self.registry = FakeRegistry()
        self.policies = Policies(self.registry, ttl_s=3600)
        self.service = TrainerService(
            self.settings,
            runs=self.runs,
            feedback=self.feedback,
            locks=self.locks,
            store=self.store,
            publisher=self.publisher,
            events=InlineRelay([self.runs.outbox], self.publisher),
            clock=self.clock,
            policies=self.policies,
        )

    async def add_feedback(self, pairs: list[tuple[PredictionMade, LabelObserved]]) -> None:
        for prediction, label in pairs:
            await self.service.record_prediction(prediction)
            await self.service.record_label(label)
