"""Test doubles of the monitor's ports, for unit tests and the benchmark: incidents (with their
outbox), detector checkpoints and daily windows in memory."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

from modelbus_contracts import Event
from modelbus_platform.testing import MemoryOutbox

from .policy import Incident


class MemoryIncidentStore:
    def __init__(self, outbox: MemoryOutbox | None = None) -> None:
        self.outbox = outbox or MemoryOutbox()
        self.docs: dict[str, Incident] = {}
        self.saves = 0

    async def init(self) -> None:
        return None

    async def save(self, incident: Incident, *, events: Sequence[Event] = ()) -> None:
        self.saves += 1
        self.docs[incident.incident_id] = dataclasses.replace(incident)
        self.outbox.add(events, doc_id=incident.incident_id)

    async def get(self, incident_id: str) -> Incident | None:
        return self.docs.get(incident_id)

    async def list(self, model_name: str | None = None, limit: int = 50) -> list[Incident]:
        found = [i for i in self.docs.values() if model_name in (None, i.model_name)]
        return sorted(found, key=lambda i: i.opened_at, reverse=True)[:limit]

    async def open_incidents(self) -> list[Incident]:
        return [i for i in self.docs.values() if i.status == "open"]

    async def ping(self) -> bool:
        return True


class MemoryStateStore:
    def __init__(self) -> None:
        self.docs: dict[str, dict] = {}
        self.saves = 0

    async def init(self) -> None:
        return None

    async def save(self, snapshot: dict) -> None:
        self.saves += 1
        self.docs[snapshot["_id"]] = json.loads(json.dumps(snapshot))  # JSON round trip

    async def load(self, model_name: str) -> dict | None:
        return self.docs.get(model_name)


class MemoryDailyStore:
    def __init__(self) -> None:
        self.docs: dict[str, dict] = {}

    async def init(self) -> None:
        return None

    async def save(self, docs: list[dict]) -> None:
        for doc in docs:
            self.docs[doc["_id"]] = json.loads(json.dumps(doc))

    async def day(self, model_name: str, day: str) -> list[dict]:
        return [d for d in self.docs.values() if (d["model_name"], d["day"]) == (model_name, day)]
