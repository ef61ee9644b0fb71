"""Adapters for the monitor's ports: incidents, detector checkpoints and daily windows in
MongoDB, and the in-memory fakes unit tests use. (The registry is read through the platform's
``modelbus_platform.registry.RegistryClient``.)"""

from __future__ import annotations

import dataclasses
import uuid
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
    """Collection ``monitor_state``: one JSON checkpoint per model (floats and lists only). Its
    join buffers (up to ``join_max_pending`` predictions and labels each, more than one
    document may hold) go to ``monitor_join`` in chunks of ``JOIN_CHUNK_ROWS`` under a fresh
    generation, written before the checkpoint that names it; older generations are deleted
    after, so a crash at any point leaves a checkpoint with all its chunks."""

    def __init__(self, db: AsyncDatabase, collection: str = "monitor_state") -> None:
        self.col = db[collection]
        self.join = db["monitor_join"]

    async def init(self) -> None:
        await self.join.create_index([("model_name", 1), ("gen", 1)])

    async def save(self, snapshot: dict) -> None:
        doc = dict(snapshot)
        join = doc.pop("join", None)
        name = doc["_id"]
        gen = None
        if join is not None:
            gen = uuid.uuid4().hex
            chunks = join_chunks(name, gen, join)
            if chunks:
                await self.join.insert_many(chunks)
            doc["join"] = {"gen": gen, "chunks": len(chunks)}
        await self.col.replace_one({"_id": name}, doc, upsert=True)
        if gen is not None:
            await self.join.delete_many({"model_name": name, "gen": {"$ne": gen}})

    async def load(self, model_name: str) -> dict | None:
        doc = await self.col.find_one({"_id": model_name})
        ref = (doc or {}).get("join")
        if doc is not None and isinstance(ref, dict) and "gen" in ref:
            chunks = await self.join.find({"model_name": model_name, "gen": ref["gen"]}).to_list()
            if len(chunks) != ref.get("chunks"):
                log.warning("checkpoint.join_incomplete", model=model_name, found=len(chunks))
                doc.pop("join")
            else:
                doc["join"] = join_from_chunks(chunks)
        return doc


JOIN_CHUNK_ROWS = 20_000  # ~2.5 MB of JSON per chunk: far below MongoDB's 16 MB document


def join_chunks(model_name: str, gen: str, join: dict[str, Any]) -> list[dict[str, Any]]:
    """The join snapshot (``Joiner.snapshot``: column dicts and the joined id list) cut into
    documents of at most ``JOIN_CHUNK_ROWS`` rows each."""
    docs: list[dict[str, Any]] = []
    for part, value in join.items():
        columns = value if isinstance(value, dict) else {"ids": value}
        rows = max((len(v) for v in columns.values()), default=0)
        for start in range(0, rows, JOIN_CHUNK_ROWS):
            docs.append(
                {
                    "_id": f"{model_name}|{gen}|{len(docs)}",
                    "model_name": model_name,
                    "gen": gen,
                    "seq": len(docs),
                    "part": part,
                    "columns": isinstance(value, dict),
                    "rows": {k: v[start : start + JOIN_CHUNK_ROWS] for k, v in columns.items()},
                }
            )
    return docs


def join_from_chunks(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    join: dict[str, Any] = {}
    for chunk in sorted(chunks, key=lambda c: int(c["seq"])):
        rows = chunk["rows"]
        if not chunk["columns"]:
            join.setdefault(chunk["part"], []).extend(rows["ids"])
            continue
        columns = join.setdefault(chunk["part"], {})
        for key, values in rows.items():
            columns.setdefault(key, []).extend(values)
    return join


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
