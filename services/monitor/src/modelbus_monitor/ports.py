"""The monitor's ports: where incidents are kept and how the registry is read."""

from __future__ import annotations

from typing import Protocol

from modelbus_contracts.api import ModelView, VersionView

from .domain import Incident


class IncidentStore(Protocol):
    async def init(self) -> None: ...

    async def save(self, incident: Incident) -> None:
        """Insert or replace the incident (idempotent on incident_id)."""

    async def get(self, incident_id: str) -> Incident | None: ...

    async def list(self, model_name: str | None = None, limit: int = 50) -> list[Incident]: ...

    async def open_incidents(self) -> list[Incident]: ...

    async def ping(self) -> bool: ...


class RegistryClient(Protocol):
    async def list_models(self) -> list[ModelView]: ...

    async def get_model(self, name: str) -> ModelView | None: ...

    async def get_version(self, name: str, version: int) -> VersionView | None: ...

    async def ping(self) -> bool: ...
