"""The MongoDB adapter of the registry port (PyMongo async); the in-memory one for unit tests
is in ``testing``. Both honour the same contract: version numbers taken with one atomic
``$inc``, aliases moved only by compare-and-set, the audit log insert-only with an increasing
``seq``, events stored with the write that causes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from modelbus_contracts import Event
from modelbus_platform.outbox import FIELD, PENDING, MongoOutbox, outbox_doc, outbox_set
from modelbus_platform.stores import mongo_ping

from .domain import STATUS_REGISTERED, new_model

NO_ID = {"_id": 0, FIELD: 0, PENDING: 0}


class MongoRegistryRepository:
    """Collections ``models``, ``versions``, ``audit`` and ``counters`` in one database."""

    def __init__(self, db: AsyncDatabase) -> None:
        self.db = db
        self.models = db["models"]
        self.versions = db["versions"]
        self.audit = db["audit"]
        self.counters = db["counters"]
        self.policies = db["policies"]
        self.outboxes = [
            MongoOutbox(self.models),
            MongoOutbox(self.versions),
            MongoOutbox(self.policies),
        ]

    async def init(self) -> None:
        await self.models.create_index([("name", ASCENDING)], unique=True)
        await self.versions.create_index(
            [("model_name", ASCENDING), ("version", ASCENDING)], unique=True
        )
        await self.versions.create_index(
            [("model_name", ASCENDING), ("run_id", ASCENDING)], unique=True
        )
        # one version per artifact: partial, so versions stored before the field have none
        await self.versions.create_index(
            [("model_name", ASCENDING), ("artifact_sha256", ASCENDING)],
            unique=True,
            partialFilterExpression={"artifact_sha256": {"$exists": True}},
        )
        await self.versions.create_index([("status", ASCENDING)])
        # versions stored before the sweep get its count (it compares by equality)
        await self.versions.update_many(
            {"reannounced": {"$exists": False}}, {"$set": {"reannounced": 0}}
        )
        await self.policies.create_index(
            [("model_name", ASCENDING), ("revision", ASCENDING)], unique=True
        )
        await self.audit.create_index([("seq", ASCENDING)], unique=True)
        await self.audit.create_index([("model_name", ASCENDING), ("seq", DESCENDING)])
        for outbox in self.outboxes:
            await outbox.init()

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
            await self.models.insert_one(new_model(name, now))
        except DuplicateKeyError:
            pass  # a concurrent first registration created it

    async def cas_aliases(
        self,
        name: str,
        expected: dict[str, int | None],
        new: dict[str, int | None],
        now: datetime,
        *,
        rollout: dict[str, Any] | None = None,
        events: Sequence[Event] = (),
    ) -> dict[str, Any] | None:
        query: dict[str, Any] = {"name": name}
        query.update({f"aliases.{alias}": value for alias, value in expected.items()})
        update: dict[str, Any] = {f"aliases.{alias}": value for alias, value in new.items()}
        update["updated_at"] = now
        if rollout is not None:
            update["rollout"] = rollout
        update.update(outbox_set(events))
        return await self.models.find_one_and_update(
            query,
            {"$set": update, "$inc": {"alias_revision": 1}},
            return_document=ReturnDocument.AFTER,
            projection=NO_ID,
        )

    async def set_rollout(
        self, name: str, rollout: dict[str, Any], now: datetime, *, events: Sequence[Event] = ()
    ) -> None:
        await self.models.update_one(
            {"name": name},
            {"$set": {"rollout": rollout, "updated_at": now, **outbox_set(events)}},
        )

    async def insert_version(self, doc: dict[str, Any], *, events: Sequence[Event] = ()) -> bool:
        try:
            await self.versions.insert_one({**doc, **outbox_doc(events)})
            return True
        except DuplicateKeyError:
            return False

    async def get_version(self, name: str, version: int) -> dict[str, Any] | None:
        return await self.versions.find_one({"model_name": name, "version": version}, NO_ID)

    async def find_version_by_run(self, name: str, run_id: str) -> dict[str, Any] | None:
        return await self.versions.find_one({"model_name": name, "run_id": run_id}, NO_ID)

    async def find_version_by_artifact(self, name: str, sha256: str) -> dict[str, Any] | None:
        query = {"model_name": name, "artifact.sha256": sha256}
        found = await self.versions.find(query, NO_ID).sort("version", ASCENDING).to_list(1)
        return found[0] if found else None

    async def list_versions(self, name: str) -> list[dict[str, Any]]:
        cursor = self.versions.find({"model_name": name}, NO_ID).sort("version", ASCENDING)
        return await cursor.to_list(None)

    async def count_versions(self, name: str) -> int:
        return await self.versions.count_documents({"model_name": name})

    async def update_version(self, name: str, version: int, fields: dict[str, Any]) -> None:
        await self.versions.update_one({"model_name": name, "version": version}, {"$set": fields})

    async def versions_in_status(self, status: str, limit: int) -> list[dict[str, Any]]:
        cursor = self.versions.find({"status": status}, NO_ID)
        docs = await cursor.sort([("model_name", ASCENDING), ("version", ASCENDING)]).to_list(limit)
        return docs[:limit]

    async def sweep_version(
        self,
        name: str,
        version: int,
        reannounced: int,
        fields: dict[str, Any],
        *,
        events: Sequence[Event] = (),
    ) -> bool:
        # equality only: nx-27017 lets concurrent writers through an ``$or``/``$exists`` filter
        # (hence the count given to every version by ``init``)
        query = {
            "model_name": name,
            "version": version,
            "status": STATUS_REGISTERED,
            "reannounced": reannounced,
        }
        moved = await self.versions.find_one_and_update(
            query, {"$set": {**fields, **outbox_set(events)}}, projection={"_id": 1}
        )
        return moved is not None

    async def latest_policy(self, name: str) -> dict[str, Any] | None:
        cursor = self.policies.find({"model_name": name}, NO_ID).sort("revision", DESCENDING)
        found = await cursor.limit(1).to_list(1)
        return found[0] if found else None

    async def insert_policy(self, doc: dict[str, Any], *, events: Sequence[Event] = ()) -> bool:
        try:
            await self.policies.insert_one({**doc, **outbox_doc(events)})
            return True
        except DuplicateKeyError:
            return False

    async def list_policies(self, name: str, limit: int) -> list[dict[str, Any]]:
        cursor = self.policies.find({"model_name": name}, NO_ID).sort("revision", DESCENDING)
        return await cursor.limit(limit).to_list(limit)

    async def latest_policies(self) -> list[dict[str, Any]]:
        # a $group, not distinct(): nx-27017's distinct turns "0" into 0 and drops "true"
        cursor = await self.policies.aggregate([{"$group": {"_id": "$model_name"}}])
        names = sorted(doc["_id"] for doc in await cursor.to_list(None))
        latest = [await self.latest_policy(name) for name in names]
        return [doc for doc in latest if doc is not None]

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
