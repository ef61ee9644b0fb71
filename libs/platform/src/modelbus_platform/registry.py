"""Reading the model registry: the ``Registry`` port and its one HTTP adapter, ``RegistryClient``.

The scorer, the batch service and the monitor follow the registry (the source of truth for
which version is champion, what a version's artifact is, which challenger is exposed); they read
it through this port only. The answers are the registry's API views from
``modelbus_contracts.api``. The in-memory fake for unit tests is
``modelbus_platform.testing.FakeRegistry``.

What a read can end in:

- the view, or ``None`` when the registry says 404 (no such model, version or champion);
- ``RegistryUnavailable`` (transient: the caller retries later, the bus redelivers) when the
  registry cannot be reached, times out, answers 5xx or answers something that is not the view;
- ``RegistryError`` for any other answer (an unexpected 4xx: retrying will not help).
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from modelbus_contracts.api import ModelView, RolloutView, VersionView
from modelbus_contracts.policy import PolicyView

from .auth import bearer

V = TypeVar("V", bound=BaseModel)
PING_TIMEOUT_S = 2.0


class RegistryError(Exception):
    """The registry answered, but not with something this client can use."""


class RegistryUnavailable(RegistryError):
    """The registry did not answer (network error, timeout, 5xx): a transient condition."""


class Registry(Protocol):
    """The registry's read API."""

    async def models(self) -> list[ModelView]:
        """Every model, with its aliases and live rollout."""
        ...

    async def model_names(self) -> list[str]:
        """The names of every model (what a listing needs, nothing more)."""
        ...

    async def model(self, name: str) -> ModelView | None: ...

    async def champion(self, name: str) -> VersionView | None:
        """The champion's version record, or None if the model has no champion (or is unknown)."""
        ...

    async def rollout(self, name: str) -> RolloutView | None:
        """The model's live rollout (shadow/canary challenger), or None."""
        ...

    async def version(self, name: str, version: int) -> VersionView | None: ...

    async def policy(self, name: str) -> PolicyView:
        """The model's newest policy revision (revision 0: none set)."""
        ...

    async def all_policies(self) -> list[PolicyView]:
        """The newest policy revision of every model that has one."""
        ...

    async def ping(self) -> bool:
        """True when the registry answers at all."""
        ...


class RegistryClient:
    """``Registry`` over the registry's HTTP API (httpx).

    ``transport`` replaces the network: ``httpx.MockTransport`` in unit tests, or
    ``httpx.ASGITransport(registry_app)`` to read an in-process registry.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
        api_key: str | None = None,
    ) -> None:
        # with auth on at the registry, a service reads it with a key of its own (viewer role)
        self.client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=timeout_s,
            transport=transport,
            headers=bearer(api_key),
        )

    async def models(self) -> list[ModelView]:
        listing = await self._json("/models")
        try:
            return [ModelView.model_validate(item) for item in listed_items(listing)]
        except ValidationError as exc:
            raise RegistryUnavailable(f"GET /models: not a list of ModelView: {exc}") from exc

    async def model_names(self) -> list[str]:
        return names_from_listing(await self._json("/models"))

    async def model(self, name: str) -> ModelView | None:
        return await self._view(f"/models/{_segment(name)}", ModelView)

    async def champion(self, name: str) -> VersionView | None:
        return await self._view(f"/models/{_segment(name)}/aliases/champion", VersionView)

    async def rollout(self, name: str) -> RolloutView | None:
        model = await self.model(name)
        return None if model is None else model.rollout

    async def version(self, name: str, version: int) -> VersionView | None:
        return await self._view(f"/models/{_segment(name)}/versions/{int(version)}", VersionView)

    async def policy(self, name: str) -> PolicyView:
        found = await self._view(f"/models/{_segment(name)}/policy", PolicyView)
        return found or PolicyView(model_name=name, revision=0)

    async def all_policies(self) -> list[PolicyView]:
        listing = await self._json("/policies")
        try:
            return [PolicyView.model_validate(item) for item in listed_items(listing)]
        except ValidationError as exc:
            raise RegistryUnavailable(f"GET /policies: not a list of PolicyView: {exc}") from exc

    async def ping(self) -> bool:
        try:
            response = await self.client.get("/health/live", timeout=PING_TIMEOUT_S)
        except httpx.HTTPError:
            return False
        return response.status_code < 500

    async def close(self) -> None:
        await self.client.aclose()

    async def _get(self, path: str) -> httpx.Response | None:
        """The response to ``GET path``; None for a 404."""
        try:
            response = await self.client.get(path)
        except httpx.HTTPError as exc:
            raise RegistryUnavailable(f"GET {path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code == 404:
            return None
        if response.status_code >= 500:
            raise RegistryUnavailable(f"GET {path}: HTTP {response.status_code}")
        if response.status_code != 200:
            raise RegistryError(f"GET {path}: HTTP {response.status_code}: {response.text[:200]}")
        return response

    async def _view(self, path: str, view: type[V]) -> V | None:
        response = await self._get(path)
        if response is None:
            return None
        try:
            return view.model_validate_json(response.content)
        except ValidationError as exc:
            raise RegistryUnavailable(f"GET {path}: not a {view.__name__}: {exc}") from exc

    async def _json(self, path: str) -> Any:
        response = await self._get(path)
        if response is None:
            raise RegistryUnavailable(f"GET {path}: HTTP 404")
        try:
            return response.json()
        except ValueError as exc:
            raise RegistryUnavailable(f"GET {path}: not JSON: {exc}") from exc


def _segment(name: str) -> str:
    return quote(name, safe="")


def listed_items(body: Any) -> list[Any]:
    """The items of ``GET /models``: a list, or one wrapped as ``{"models": [...]}`` /
    ``{"items": [...]}`` (tolerated so a registry page wrapper does not break a reader)."""
    if isinstance(body, dict):
        for key in ("models", "items"):
            if isinstance(body.get(key), list):
                return body[key]
        return []
    return body if isinstance(body, list) else []


def names_from_listing(body: Any) -> list[str]:
    """Model names from ``GET /models``: each item a ModelView (only its ``name`` is read) or a
    bare name; anything else is skipped."""
    names = []
    for item in listed_items(body):
        if isinstance(item, str):
            names.append(item)
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            names.append(item["name"])
    return names
