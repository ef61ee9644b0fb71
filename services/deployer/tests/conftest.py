"""Shared fixtures for the deployer's tests: synthetic data, trained models, a step clock."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from modelbus_ml import Dataset, LogisticModel, train_logreg

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
