"""One port, one suite: the ``Registry`` port the scorer, the batch service and the monitor read,
run against the in-memory fake (``modelbus_platform.testing.FakeRegistry``) and against the
HTTP client reading the registry service's real API (its routes and service in process, on its
in-memory repository), so what the unit tests assume is what the registry answers."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest

from modelbus_contracts import ArtifactRef, DatasetRef, Lineage, ModelTrained
from modelbus_contracts.api import AliasUpdate, VersionView
from modelbus_ml import LogisticModel
from modelbus_platform.http import create_app
from modelbus_platform.metrics import Metrics
from modelbus_platform.registry import Registry, RegistryClient, RegistryUnavailable
from modelbus_platform.stores import sha256_hex
from modelbus_platform.testing import (
    FakeRegistry,
    InlineRelay,
    MemoryObjectStore,
    RecordingPublisher,
)
from modelbus_registry.api import build_router
from modelbus_registry.service import RegistryService
from modelbus_registry.testing import MemoryRegistryRepository

FEATURES = ["x1", "x2"]
DATASET = DatasetRef(uri="datasets/d.csv", sha256="0" * 64, rows=10)


def artifact(seed: int) -> bytes:
    return LogisticModel(
        feature_names=tuple(FEATURES),
        coef=np.array([1.0, float(seed)]),
        intercept=0.0,
        mean=np.zeros(2),
        scale=np.ones(2),
        threshold=0.5,
    ).to_bytes()


def trained(name: str, data: bytes) -> ModelTrained:
    digest = sha256_hex(data)
    return ModelTrained(
        producer="trainer",
        model_name=name,
        run_id=uuid.uuid4().hex,
        artifact=ArtifactRef(
            uri=f"artifacts/{name}/{digest}.json", sha256=digest, size_bytes=len(data)
        ),
        feature_names=FEATURES,
        metrics={"auc": 0.8},
        lineage=Lineage(dataset=DATASET, holdout=DATASET, seed=0, code_version="t", trigger="api"),
        training_seconds=0.1,
    )


class Switch(httpx.AsyncBaseTransport):
    """The network to the registry app, which a test can cut."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.down = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        return await self.inner.handle_async_request(request)


@dataclass
class Arranged:
    """A ``Registry`` and the means to put versions behind it and to take it down."""

    registry: Registry
    fake: FakeRegistry | None = None
    service: RegistryService | None = None
    store: MemoryObjectStore | None = None
    network: Switch | None = None
    versions: int = 0

    async def add_version(self, name: str, *, champion: bool = False) -> VersionView:
        self.versions += 1
        data = artifact(self.versions)
        event = trained(name, data)
        if self.fake is not None:
            number = 1 + sum(1 for n, _ in self.fake.versions if n == name)
            view = fake_view(event, number)
            self.fake.put(view, champion=champion)
            return view
        assert self.service is not None and self.store is not None
        await self.store.put(event.artifact.uri, data)
        registered = await self.service.register(event)
        assert registered is not None
        if champion:
            current = (await self.service.aliases(name)).champion
            update = AliasUpdate(
                version=registered.version, expected_version=current, reason="suite"
            )
            await self.service.set_alias(name, "champion", update)
        return await self.service.get_version(name, registered.version)

    def take_down(self) -> None:
        if self.fake is not None:
            self.fake.down = True
        else:
            assert self.network is not None
            self.network.down = True


def fake_view(event: ModelTrained, number: int) -> VersionView:
    data: dict[str, Any] = {
        "model_name": event.model_name,
        "version": number,
        "run_id": event.run_id,
        "artifact": event.artifact,
        "feature_names": event.feature_names,
        "metrics": event.metrics,
        "lineage": event.lineage,
        "status": "registered",
        "created_at": event.occurred_at,
    }
    return VersionView(**data)


@pytest.fixture(params=["fake", "registry_api"])
async def arranged(request):
    if request.param == "fake":
        fake = FakeRegistry()
        yield Arranged(registry=fake, fake=fake)
        return
    store = MemoryObjectStore()
    repo = MemoryRegistryRepository()
    service = RegistryService(repo, store, InlineRelay([repo.outbox], RecordingPublisher()))

    async def ready() -> dict[str, bool]:
        return {"memory": True}

    app = create_app(title="registry", description="t", metrics=Metrics("t"), readiness=ready)
    app.include_router(build_router())
    app.state.context = service
    network = Switch(httpx.ASGITransport(app=app))
    client = RegistryClient("http://registry", transport=network)
    yield Arranged(registry=client, service=service, store=store, network=network)
    await client.close()


async def test_an_unknown_model_is_none_everywhere(arranged):
    registry = arranged.registry
    assert await registry.models() == []
    assert await registry.model_names() == []
    assert await registry.model("nope") is None
    assert await registry.champion("nope") is None
    assert await registry.rollout("nope") is None
    assert await registry.version("nope", 1) is None
    assert await registry.ping()


async def test_a_model_without_a_champion(arranged):
    registry = arranged.registry
    added = await arranged.add_version("churn")
    assert await registry.model_names() == ["churn"]
    [model] = await registry.models()
    assert (model.name, model.aliases.champion, model.latest_version) == ("churn", None, 1)
    assert (await registry.model("churn")).aliases.champion is None
    assert await registry.champion("churn") is None
    rollout = await registry.rollout("churn")
    assert rollout is None or rollout.mode == "none"
    version = await registry.version("churn", 1)
    assert version.artifact == added.artifact and version.feature_names == FEATURES
    assert await registry.version("churn", 2) is None


async def test_the_champion_is_the_version_its_alias_points_at(arranged):
    registry = arranged.registry
    await arranged.add_version("churn", champion=True)
    second = await arranged.add_version("churn", champion=True)
    await arranged.add_version("fraud")
    champion = await registry.champion("churn")
    assert (champion.version, champion.artifact.sha256) == (2, second.artifact.sha256)
    models = {m.name: m for m in await registry.models()}
    assert sorted(models) == ["churn", "fraud"] == await registry.model_names()
    assert (models["churn"].aliases.champion, models["churn"].latest_version) == (2, 2)
    assert (await registry.version("churn", 1)).version == 1


async def test_a_registry_that_is_down_is_unavailable(arranged):
    await arranged.add_version("churn", champion=True)
    arranged.take_down()
    registry = arranged.registry
    assert not await registry.ping()
    for read in (
        registry.models(),
        registry.model_names(),
        registry.model("churn"),
        registry.champion("churn"),
        registry.rollout("churn"),
        registry.version("churn", 1),
    ):
        with pytest.raises(RegistryUnavailable):
            await read
