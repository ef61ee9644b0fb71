"""Adapters of the registry port: MongoDB (PyMongo async) for real, in-memory for unit tests.

Both honour the same contract: version numbers taken with one atomic ``$inc``, aliases moved
only by compare-and-set, the audit log insert-only with an increasing ``seq``.
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from modelbus_platform.stores import mongo_ping

from .domain import empty_aliases

NO_ID = {"_id": 0}


def _new_model(name: str, now: datetime) -> dict[str, Any]:
    return {
        "name": name,
        "aliases": empty_aliases(),
        "latest_version": 0,
        "alias_revision": 0,
        "created_at": now,
        "updated_at": now,
    }


class MongoRegistryRepository:
    """Collections ``models``, ``versions``, ``audit`` and ``counters`` in one database."""

    def __init__(self, db: AsyncDatabase) -> None:
        self.db = db
        self.models = db["models"]
        self.versions = db["versions"]
        self.audit = db["audit"]
        self.counters = db["counters"]

    async def init(self) -> None:
        await self.models.create_index([("name", ASCENDING)], unique=True)
        await self.versions.create_index(
            [("model_name", ASCENDING), ("version", ASCENDING)], unique=True
        )
        await self.versions.create_index(
            [("model_name", ASCENDING), ("run_id", ASCENDING)], unique=True
        )
        await self.audit.create_index([("seq", ASCENDING)], unique=True)
        await self.audit.create_index([("model_name", ASCENDING), ("seq", DESCENDING)])

    async def ping(self) -> bool:
        return await mongo_ping(self.db)

    async def get_model(self, name: str) -> dict[str, Any] | None:
        return await self.models.find_one({"name": name}, NO_ID)

    async def list_models(self) -> list[dict[str, Any]]:
        return await self.models.find({}, NO_ID).sort("name", ASCENDING).to_list(None)

    async def allocate_version(self, name: str, now: datetime) -> int:
        await self._ensure_model(name, now)
        # $setOnInsert is not honoured by every Mongo-wire server (nx-27017), so the model doc
        # is created first; the $inc itself is the single atomic step that hands out numbers.
        doc = await self.models.find_one_and_update(
            {"name": name},
            {"$inc": {"latest_version": 1}, "$set": {"updated_at": now}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
            projection=NO_ID,
        )
        return int(doc["latest_version"])

    async def _ensure_model(self, name: str, now: datetime) -> None:
        if await self.models.find_one({"name": name}, {"_id": 1}) is not None:
            return
        try:
            await self.models.insert_one(_new_model(name, now))
        except DuplicateKeyError:
            pass  # a concurrent first registration created it

    async def cas_aliases(
        self,
        name: str,
        expected: dict[str, int | None],
        new: dict[str, int | None],
        now: datetime,
    ) -> dict[str, Any] | None:
        query: dict[str, Any] = {"name": name}
        query.update({f"aliases.{alias}": value for alias, value in expected.items()})
        update = {f"aliases.{alias}": value for alias, value in new.items()}
        update["updated_at"] = now
        return await self.models.find_one_and_update(
            query,
            {"$set": update, "$inc": {"alias_revision": 1}},
            return_document=ReturnDocument.AFTER,
            projection=NO_ID,
        )

    async def set_rollout(self, name: str, rollout: dict[str, Any], now: datetime) -> None:
        await self.models.update_one(
            {"name": name}, {"$set": {"rollout": rollout, "updated_at": now}}
        )

    async def insert_version(self, doc: dict[str, Any]) -> bool:
        try:
            await self.versions.insert_one(dict(doc))
            return True
        except DuplicateKeyError:
            return False

    async def get_version(self, name: str, version: int) -> dict[str, Any] | None:
        return await self.versions.find_one({"model_name": name, "version": version}, NO_ID)

    async def find_version_by_run(self, name: str, run_id: str) -> dict[str, Any] | None:
        return await self.versions.find_one({"model_name": name, "run_id": run_id}, NO_ID)

    async def list_versions(self, name: str) -> list[dict[str, Any]]:
        cursor = self.versions.find({"model_name": name}, NO_ID).sort("version", ASCENDING)
        return await cursor.to_list(None)

    async def count_versions(self, name: str) -> int:
        return await self.versions.count_documents({"model_name": name})

    async def update_version(self, name: str, version: int, fields: dict[str, Any]) -> None:
        await self.versions.update_one({"model_name": name, "version": version}, {"$set": fields})

    async def append_audit(self, record: dict[str, Any]) -> int:
        counter = await self.counters.find_one_and_update(
            {"_id": "audit_seq"},
            {"$inc": {"value": 1}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        seq = int(counter["value"])
        await self.audit.insert_one({**record, "seq": seq})
        return seq

    async def list_audit(self, model_name: str | None, limit: int) -> list[dict[str, Any]]:
        query = {"model_name": model_name} if model_name else {}
        cursor = self.audit.find(query, NO_ID).sort("seq", DESCENDING).limit(limit)
        return await cursor.to_list(None)


class MemoryRegistryRepository:
    """The same contract in memory (unit tests). Copies in and out, like a real store."""

    def __init__(self) -> None:
        self.models: dict[str, dict[str, Any]] = {}
        self.versions: dict[tuple[str, int], dict[str, Any]] = {}
        self.audit: list[dict[str, Any]] = []

    async def init(self) -> None:
        return None

    async def ping(self) -> bool:
        return True

    async def get_model(self, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.models.get(name))

    async def list_models(self) -> list[dict[str, Any]]:
        return [copy.deepcopy(self.models[n]) for n in sorted(self.models)]

    async def allocate_version(self, name: str, now: datetime) -> int:
        model = self.models.setdefault(name, _new_model(name, now))
        model["latest_version"] += 1
        model["updated_at"] = now
        return int(model["latest_version"])

    async def cas_aliases(
        self,
        name: str,
        expected: dict[str, int | None],
        new: dict[str, int | None],
        now: datetime,
    ) -> dict[str, Any] | None:
        model = self.models.get(name)
        if model is None or any(model["aliases"].get(a) != v for a, v in expected.items()):
            return None
        model["aliases"].update(new)
        model["alias_revision"] += 1
        model["updated_at"] = now
        return copy.deepcopy(model)

    async def set_rollout(self, name: str, rollout: dict[str, Any], now: datetime) -> None:
        model = self.models.get(name)
        if model is not None:
            model.update(rollout=copy.deepcopy(rollout), updated_at=now)

    async def insert_version(self, doc: dict[str, Any]) -> bool:
        name, version, run_id = doc["model_name"], doc["version"], doc["run_id"]
        taken = (name, version) in self.versions or any(
            v["model_name"] == name and v["run_id"] == run_id for v in self.versions.values()
        )
        if taken:
            return False
        self.versions[(name, version)] = copy.deepcopy(doc)
        return True

    async def get_version(self, name: str, version: int) -> dict[str, Any] | None:
        return copy.deepcopy(self.versions.get((name, version)))

    async def find_version_by_run(self, name: str, run_id: str) -> dict[str, Any] | None:
        for doc in self.versions.values():
            if doc["model_name"] == name and doc["run_id"] == run_id:
                return copy.deepcopy(doc)
        return None

    async def list_versions(self, name: str) -> list[dict[str, Any]]:
        docs = [v for (n, _), v in sorted(self.versions.items()) if n == name]
        return copy.deepcopy(docs)

    async def count_versions(self, name: str) -> int:
        return sum(1 for n, _ in self.versions if n == name)

    async def update_version(self, name: str, version: int, fields: dict[str, Any]) -> None:
        doc = self.versions.get((name, version))
        if doc is not None:
            doc.update(copy.deepcopy(fields))

    async def append_audit(self, record: dict[str, Any]) -> int:
        seq = len(self.audit) + 1
        self.audit.append({**copy.deepcopy(record), "seq": seq})
        return seq

    async def list_audit(self, model_name: str | None, limit: int) -> list[dict[str, Any]]:
        rows = [r for r in reversed(self.audit) if model_name in (None, r["model_name"])]
        return copy.deepcopy(rows[:limit])
