"""The scorer's ports: what it needs from the outside world, as Protocols.

The object store (``modelbus_platform.stores.ObjectStore``) and the event publisher
(``modelbus_platform.bus.Publisher``) are the platform's ports; the registry is the scorer's own.
"""

from __future__ import annotations

from typing import Protocol

from modelbus_contracts.api import RolloutView, VersionView


class RegistryUnavailable(Exception):
    """The registry did not answer (network error, timeout, 5xx): a transient condition."""


class Registry(Protocol):
    """The model registry, the source of truth for which version is champion."""

    async def model_names(self) -> list[str]: ...

    async def champion(self, name: str) -> VersionView | None:
        """The champion's version record, or None if the model has no champion (or is unknown)."""
        ...

    async def rollout(self, name: str) -> RolloutView | None:
        """The model's live rollout (shadow/canary challenger), or None."""
        ...

    async def version(self, name: str, version: int) -> VersionView | None: ...

    async def ping(self) -> bool: ...
