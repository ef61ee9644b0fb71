"""Adapters for the monitor's ports: incidents, detector checkpoints and daily windows in
MongoDB, and the in-memory fakes unit tests use. (The registry is read through the platform's
``modelbus_platform.registry.RegistryClient``.)"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from pymongo import DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from modelbus_contracts import Event
from modelbus_platform.outbox import MongoOutbox, outbox_set
from modelbus_platform.stores import mongo_ping

from .policy import Incident

log = structlog.get_logger(__name__)

INCIDENT_FIELDS = {f.name for f in dataclasses.fields(Incident)}


INCIDENT_TIMES = ("opened_at", "closed_at", "last_emitted_at", "verdict_at")


def incident_from_doc(doc: dict[str, Any]) -> Incident:
    """The incident as saved. Values written by ``$set`` come back loosely typed from the
    MongoDB-wire server (datetimes as naive ISO strings, booleans as 0/1): typed again here."""
    fields = {k: v for k, v in doc.items() if k in INCIDENT_FIELDS}
    for name in INCIDENT_TIMES:
        value = fields.get(name)
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if isinstance(value, datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        if name in fields:
            fields[name] = value
    if "published" in fields:
        fields["published"] = bool(fields["published"])
    return Incident(**fields)


def incident_view(incident: Incident) -> dict[str, Any]:
    """JSON-ready view for the HTTP API."""
    out = dataclasses.asdict(incident)
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in out.items()}


class MongoIncidentStore:
    """Collection ``incidents``: one document per incident, ``_id`` = incident id."""

    def __init__(self, db: AsyncDatabase, collection: str = "incidents") -> None:
        self.db = db
        self.col = db[collection]
        self.outbox = MongoOutbox(self.col)

    async def init(self) -> None:
        await self.col.create_index([("model_name", 1), ("status", 1)])
        await self.col.create_index([("opened_at", DESCENDING)])
        await self.outbox.init()

    async def save(self, incident: Incident, *, events: Sequence[Event] = ()) -> None:
        # $set, not a replace: events still waiting in the document's outbox stay there
        fields = {**dataclasses.asdict(incident), **outbox_set(events)}
        await self.col.update_one({"_id": incident.incident_id}, {"$set": fields}, upsert=True)

    async def get(self, incident_id: str) -> Incident | None:
        doc = await self.col.find_one({"_id": incident_id})
        return incident_from_doc(doc) if doc else None

    async def list(self, model_name: str | None = None, limit: int = 50) -> list[Incident]:
        query = {"model_name": model_name} if model_name else {}
        cursor = self.col.find(query).sort("opened_at", DESCENDING).limit(limit)
        return [incident_from_doc(doc) async for doc in cursor]

    async def open_incidents(self) -> list[Incident]:
        cursor = self.col.find({"status": "open"}).sort("opened_at", DESCENDING)
        return [incident_from_doc(doc) async for doc in cursor]

    async def ping(self) -> bool:
        return await mongo_ping(self.db)


class MongoStateStore:
    """Collection ``monitor_state``: one JSON checkpoint per model (floats and lists only)."""

    def __init__(self, db: AsyncDatabase, collection: str = "monitor_state") -> None:
        self.col = db[collection]

    async def init(self) -> None:
        return None

    async def save(self, snapshot: dict) -> None:
        await self.col.replace_one({"_id": snapshot["_id"]}, snapshot, upsert=True)

    async def load(self, model_name: str) -> dict | None:
        return await self.col.find_one({"_id": model_name})


class MongoDailyStore:
    """Collection ``daily_features``: ``_id`` = ``model|day|feature``."""

    def __init__(self, db: AsyncDatabase, collection: str = "daily_features") -> None:
        self.col = db[collection]

    async def init(self) -> None:
        await self.col.create_index([("model_name", 1), ("day", 1)])

    async def save(self, docs: list[dict]) -> None:
        for doc in docs:
            await self.col.replace_one({"_id": doc["_id"]}, doc, upsert=True)

    async def day(self, model_name: str, day: str) -> list[dict]:
        cursor = self.col.find({"model_name": model_name, "day": day})
        return [doc async for doc in cursor]
