"""pytest fixtures: the real servers, started once per test session on free loopback ports."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from . import testing
from .servers import Infra, start_infra


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    servers = start_infra(tmp_path_factory.mktemp("infra"))
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def unique() -> str:
    """A short unique suffix: separate databases, buckets and model names per test."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def service_env(infra: Infra, unique: str) -> dict[str, str]:
    """Environment for services under test: the session's servers, a fresh db and bucket."""
    return infra.env(db=f"mb_{unique}", bucket=f"mb-{unique}")


@pytest.fixture
def publish_artifact():
    """``await publish_artifact(store, name, version, model=None, *, data=None, sha=None)``: a
    model's artifact put in ``store``, and the registry record that points at it."""
    return testing.put_version


@pytest.fixture
def make_model():
    """``make_model(names=("age", "income"), coef=None, intercept=0.0)``: a tiny model."""
    return testing.tiny_model
