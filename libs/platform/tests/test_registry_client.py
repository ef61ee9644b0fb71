"""The registry client over a mock transport: paths, views, what each status means (404 -> None,
5xx / network / a body that is not the view -> RegistryUnavailable, other 4xx -> RegistryError),
tolerated listing shapes, ping and close. The contract shared with the fake is run against the
real registry API in ``tests/test_registry_client_suite.py``."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from modelbus_contracts import ArtifactRef, DatasetRef, Lineage
from modelbus_contracts.api import VersionView
from modelbus_platform.registry import (
    RegistryClient,
    RegistryError,
    RegistryUnavailable,
    names_from_listing,
)

SHA = "a" * 64


def version_json(name: str, version: int) -> dict:
    ref = DatasetRef(uri="datasets/d.csv", sha256=SHA, rows=3)
    return VersionView(
        model_name=name,
        version=version,
        run_id="r",
        artifact=ArtifactRef(uri=f"artifacts/{name}/{SHA}.json", sha256=SHA, size_bytes=1),
        feature_names=["x"],
        lineage=Lineage(dataset=ref, holdout=ref, seed=0, code_version="t", trigger="api"),
        status="champion",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    ).model_dump(mode="json")


def model_json(name: str, champion: int | None = 1, rollout: dict | None = None) -> dict:
    return {
        "name": name,
        "aliases": {"model_name": name, "champion": champion},
        "rollout": rollout,
    }


class Routes:
    """A mock registry: path -> (status, JSON body); records the paths asked for."""

    def __init__(self, routes: dict[str, tuple[int, object]]) -> None:
        self.routes = routes
        self.paths: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.raw_path.decode()
        self.paths.append(path)
        status, body = self.routes.get(path, (404, {"detail": "not found"}))
        if isinstance(body, bytes):
            return httpx.Response(status, content=body)
        return httpx.Response(status, json=body)


def client(routes: dict[str, tuple[int, object]]) -> tuple[RegistryClient, Routes]:
    mock = Routes(routes)
    return RegistryClient("http://registry/", transport=httpx.MockTransport(mock)), mock


async def test_views_are_read_from_the_registry_paths():
    rollout = {"mode": "canary", "version": 2, "champion_version": 1, "fraction": 0.1}
    registry, mock = client(
        {
            "/models": (200, [model_json("churn")]),
            "/models/churn": (200, model_json("churn", rollout=rollout)),
            "/models/churn/aliases/champion": (200, version_json("churn", 1)),
            "/models/churn/versions/2": (200, version_json("churn", 2)),
        }
    )
    [model] = await registry.models()
    assert (model.name, model.aliases.champion) == ("churn", 1)
    assert await registry.model_names() == ["churn"]
    assert (await registry.model("churn")).rollout.fraction == 0.1
    assert (await registry.rollout("churn")).mode == "canary"
    assert (await registry.champion("churn")).version == 1
    assert (await registry.version("churn", 2)).version == 2
    await registry.close()
    assert mock.paths[-1] == "/models/churn/versions/2"


async def test_404_is_none_and_names_are_one_path_segment():
    registry, mock = client({})
    assert await registry.model("a/b") is None
    assert await registry.champion("churn") is None
    assert await registry.rollout("churn") is None
    assert await registry.version("churn", 9) is None
    assert mock.paths[0] == "/models/a%2Fb"


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (500, {"detail": "boom"}, RegistryUnavailable),
        (503, {"detail": "starting"}, RegistryUnavailable),
        (200, {"not": "a version"}, RegistryUnavailable),
        (200, b"<html>proxy error</html>", RegistryUnavailable),
        (400, {"detail": "bad name"}, RegistryError),
    ],
)
async def test_what_is_not_a_view_raises(status, body, error):
    registry, _ = client(
        {"/models/churn/aliases/champion": (status, body), "/models": (status, body)}
    )
    with pytest.raises(error):
        await registry.champion("churn")
    if status != 200 or isinstance(body, bytes):
        with pytest.raises(error):
            await registry.model_names()


async def test_a_broken_listing_item_is_unavailable_for_models_but_names_are_lenient():
    registry, _ = client({"/models": (200, [{"name": "a"}, "b", {"x": 1}])})
    assert await registry.model_names() == ["a", "b"]
    with pytest.raises(RegistryUnavailable):
        await registry.models()


async def test_network_errors_are_transient_and_ping_says_false():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    registry = RegistryClient("http://registry", transport=httpx.MockTransport(refuse))
    with pytest.raises(RegistryUnavailable, match="ConnectError"):
        await registry.models()
    with pytest.raises(RegistryUnavailable):
        await registry.version("churn", 1)
    assert await registry.ping() is False


async def test_ping_is_true_whenever_the_registry_answers_below_500():
    assert await client({"/health/live": (200, {"status": "live"})})[0].ping()
    assert await client({})[0].ping()  # a 404: something answered
    assert not await client({"/health/live": (503, {})})[0].ping()


def test_registry_listing_shapes_are_tolerated():
    assert names_from_listing([{"name": "a"}, "b", {"x": 1}]) == ["a", "b"]
    assert names_from_listing({"models": [{"name": "c"}]}) == ["c"]
    assert names_from_listing({"items": ["d"]}) == ["d"]
    assert names_from_listing(None) == []


async def test_a_wrapped_listing_is_read_as_models():
    registry, _ = client({"/models": (200, {"items": [model_json("x", champion=None)]})})
    [model] = await registry.models()
    assert (model.name, model.aliases.champion) == ("x", None)
