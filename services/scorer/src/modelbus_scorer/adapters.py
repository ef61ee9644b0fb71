"""Adapters for the scorer's ports: the registry over HTTP (httpx), and an in-memory fake."""

from __future__ import annotations

from typing import Any

import httpx
import structlog
from pydantic import ValidationError

from modelbus_contracts.api import ModelView, RolloutView, VersionView

from .ports import RegistryUnavailable

log = structlog.get_logger(__name__)


class HttpRegistry:
    """``GET {registry_url}/models`` and ``GET /models/{name}/aliases/champion``.

    ``transport`` lets tests inject ``httpx.MockTransport`` (or anything ASGI) in place of the
    network.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout_s, transport=transport
        )

    async def _get(self, path: str) -> httpx.Response:
        try:
            response = await self.client.get(path)
        except httpx.HTTPError as exc:
            raise RegistryUnavailable(f"GET {path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 500:
            raise RegistryUnavailable(f"GET {path}: HTTP {response.status_code}")
        return response

    async def model_names(self) -> list[str]:
        response = await self._get("/models")
        if response.status_code != 200:
            raise RegistryUnavailable(f"GET /models: HTTP {response.status_code}")
        return names_from_listing(response.json())

    async def champion(self, name: str) -> VersionView | None:
        path = f"/models/{name}/aliases/champion"
        response = await self._get(path)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise RegistryUnavailable(f"GET {path}: HTTP {response.status_code}")
        try:
            return VersionView.model_validate_json(response.content)
        except ValidationError as exc:
            raise RegistryUnavailable(f"GET {path}: not a VersionView: {exc}") from exc

    async def rollout(self, name: str) -> RolloutView | None:
        path = f"/models/{name}"
        response = await self._get(path)
        if response.status_code != 200:
            return None
        try:
            return ModelView.model_validate_json(response.content).rollout
        except ValidationError as exc:
            raise RegistryUnavailable(f"GET {path}: not a ModelView: {exc}") from exc

    async def version(self, name: str, version: int) -> VersionView | None:
        path = f"/models/{name}/versions/{version}"
        response = await self._get(path)
        if response.status_code != 200:
            return None
        try:
            return VersionView.model_validate_json(response.content)
        except ValidationError as exc:
            raise RegistryUnavailable(f"GET {path}: not a VersionView: {exc}") from exc

    async def ping(self) -> bool:
        try:
            response = await self.client.get("/models", timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code < 500

    async def close(self) -> None:
        await self.client.aclose()


def names_from_listing(body: Any) -> list[str]:
    """Model names from ``GET /models``: a list of ModelView (or names), or ``{"models": [...]}``
    / ``{"items": [...]}``, tolerated so a registry page wrapper does not break the scorer."""
    if isinstance(body, dict):
        body = body.get("models", body.get("items", []))
    names = []
    for item in body if isinstance(body, list) else []:
        if isinstance(item, str):
            names.append(item)
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            names.append(item["name"])
    return names


class FakeRegistry:
    """In-memory registry for unit tests: ``champions[name] = VersionView | None``."""

    def __init__(self) -> None:
        self.champions: dict[str, VersionView | None] = {}
        self.rollouts: dict[str, RolloutView] = {}
        self.versions: dict[tuple[str, int], VersionView] = {}
        self.down = False
        self.calls: list[str] = []

    async def model_names(self) -> list[str]:
        self._check("models")
        return sorted(self.champions)

    async def champion(self, name: str) -> VersionView | None:
        self._check(f"champion:{name}")
        return self.champions.get(name)

    async def rollout(self, name: str) -> RolloutView | None:
        self._check(f"rollout:{name}")
        return self.rollouts.get(name)

    async def version(self, name: str, version: int) -> VersionView | None:
        self._check(f"version:{name}:{version}")
        return self.versions.get((name, version))

    async def ping(self) -> bool:
        return not self.down

    def _check(self, call: str) -> None:
        self.calls.append(call)
        if self.down:
            raise RegistryUnavailable("fake registry is down")
