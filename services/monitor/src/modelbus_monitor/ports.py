"""The monitor's ports: where incidents, detector checkpoints and daily windows are kept. (The
registry is the platform's port, ``modelbus_platform.registry.Registry``.)"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from modelbus_contracts import Event

from .policy import Incident


class IncidentStore(Protocol):
    async def init(self) -> None: ...

    async def save(self, incident: Incident, *, events: Sequence[Event] = ()) -> None:
        """Insert or update the incident (idempotent on incident_id), with ``events`` in the
        same write (the outbox)."""

    async def get(self, incident_id: str) -> Incident | None: ...

    async def list(self, model_name: str | None = None, limit: int = 50) -> list[Incident]: ...

    async def open_incidents(self) -> list[Incident]: ...

    async def ping(self) -> bool: ...


class StateStore(Protocol):
    """Detector checkpoints: one JSON document per model (``_id`` = model name)."""

    async def init(self) -> None: ...

    async def save(self, snapshot: dict) -> None: ...

    async def load(self, model_name: str) -> dict | None: ...


class DailyStore(Protocol):
    """Daily feature windows, one document per (model, day, feature)."""

    async def init(self) -> None: ...

    async def save(self, docs: list[dict]) -> None:
        """Insert or replace each document (idempotent on ``_id``)."""

    async def day(self, model_name: str, day: str) -> list[dict]: ...
