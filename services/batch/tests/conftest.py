"""Fixtures for the batch tests: tiny models, artifacts in a store, registry records (the
shared helpers of ``modelbus_embedded.testing``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import pytest

from modelbus_contracts.api import VersionView
from modelbus_embedded import testing
from modelbus_ml import LogisticModel
from modelbus_platform.stores import ObjectStore

FEATURES = ("age", "income")
version_view = partial(testing.version_view, names=FEATURES)


def tiny_model(
    names: tuple[str, ...] = FEATURES, coef: list[float] | None = None, intercept: float = 0.0
) -> LogisticModel:
    return testing.tiny_model(names, coef, intercept)


Publish = Callable[..., Awaitable[VersionView]]


@pytest.fixture
def publish_artifact() -> Publish:
    """Put a model's artifact in ``store`` and return the registry record that points at it."""

    async def put(
        store: ObjectStore,
        name: str,
        version: int,
        model: LogisticModel | None = None,
        *,
        data: bytes | None = None,
        sha: str | None = None,
    ) -> VersionView:
        return await testing.put_version(
            store, name, version, model or tiny_model(), data=data, sha=sha
        )

    return put


@pytest.fixture
def make_model() -> Callable[..., LogisticModel]:
    return tiny_model
