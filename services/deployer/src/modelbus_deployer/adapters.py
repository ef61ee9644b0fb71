"""Adapters for the deployer's ports: MongoDB decisions and live-window checkpoints, verified
loads from object storage, and in-memory fakes for unit tests."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from pymongo import DESCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from modelbus_contracts import ArtifactRef, DatasetRef
from modelbus_ml import (
    ArtifactError,
    Dataset,
    DatasetError,
    ServableModel,
    from_csv_bytes,
    load_model,
)
from modelbus_platform.stores import (
    IntegrityError,
    ObjectNotFound,
    ObjectStore,
    get_verified,
)

from .ports import LoadError, StageKey

NEWEST_FIRST = [("decided_at", DESCENDING), ("version", DESCENDING)]
LIVE_STAGES = ["shadow", "canary", "watch"]


class ObjectStoreModels:
    """Loads artifacts and hold-outs from object storage, refusing any sha256 mismatch."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    async def _read(self, what: str, key: str, sha256: str) -> bytes:
        try:
            return await get_verified(self.store, key, sha256)
        except ObjectNotFound as exc:
            raise LoadError(what, f"{key} not found in object storage") from exc
        except IntegrityError as exc:
            raise LoadError(what, f"integrity check failed: {exc}") from exc

    async def load_model(self, ref: ArtifactRef) -> ServableModel:
        data = await self._read("artifact", ref.uri, ref.sha256)
        try:
            # any family; the sha256 is checked again before parsing/unpickling
            return load_model(data, ref.format, ref.sha256)
        except ArtifactError as exc:
            raise LoadError("artifact", f"{ref.uri}: {exc}") from exc

    async def load_dataset(self, ref: DatasetRef) -> Dataset:
        data = await self._read("hold-out", ref.uri, ref.sha256)
        try:
            return from_csv_bytes(data)
        except DatasetError as exc:
            raise LoadError("hold-out", f"{ref.uri}: {exc}") from exc

    async def ping(self) -> bool:
        return await self.store.ping()


class MongoDecisionStore:
    """``decisions`` collection with a unique index on (model_name, version)."""

    def __init__(self, db: AsyncDatabase, collection: str = "decisions") -> None:
        self.col = db[collection]

    async def init(self) -> None:
        await self.col.create_index([("model_name", 1), ("version", 1)], unique=True)
        await self.col.create_index(NEWEST_FIRST)

    async def get(self, model_name: str, version: int) -> dict[str, Any] | None:
        doc = await self.col.find_one(
            {"model_name": model_name, "version": version}, projection={"_id": False}
        )
        return _normalised(doc) if doc is not None else None

    async def insert(self, doc: dict[str, Any]) -> bool:
        try:
            await self.col.insert_one(dict(doc))
        except DuplicateKeyError:
            return False
        return True

    async def mark_published(self, model_name: str, version: int, at: datetime) -> None:
        await self.col.update_one(
            {"model_name": model_name, "version": version},
            {"$set": {"published": True, "published_at": at.astimezone(UTC).isoformat()}},
        )

    async def transition(
        self, model_name: str, version: int, stage: int, fields: dict[str, Any]
    ) -> dict[str, Any] | None:
        doc = await self.col.find_one_and_update(
            {"model_name": model_name, "version": version, "stage": stage},
            {"$set": fields},
            projection={"_id": False},
            return_document=ReturnDocument.AFTER,
        )
        return _normalised(doc) if doc is not None else None

    async def active(self, model_name: str) -> dict[str, Any] | None:
        cursor = (
            self.col.find(
                {"model_name": model_name, "live": {"$in": LIVE_STAGES}},
                projection={"_id": False},
            )
            .sort("version", DESCENDING)
            .limit(1)
        )
        docs = await cursor.to_list(length=1)
        return _normalised(docs[0]) if docs else None

    async def list(self, model_name: str | None, limit: int) -> list[dict[str, Any]]:
        query = {"model_name": model_name} if model_name else {}
        cursor = self.col.find(query, projection={"_id": False}).sort(NEWEST_FIRST).limit(limit)
        return [_normalised(d) for d in await cursor.to_list(length=limit)]


class MongoLiveStats:
    """``live_stats`` collection: one checkpoint per (model_name, version, stage)."""

    def __init__(self, db: AsyncDatabase, collection: str = "live_stats") -> None:
        self.col = db[collection]

    @staticmethod
    def _id(key: StageKey) -> dict[str, Any]:
        model_name, version, stage = key
        return {"model_name": model_name, "version": version, "stage": stage}

    async def init(self) -> None:
        await self.col.create_index([("model_name", 1), ("version", 1), ("stage", 1)], unique=True)

    async def load(self, key: StageKey) -> dict[str, Any] | None:
        doc = await self.col.find_one(self._id(key), projection={"_id": False})
        if doc is None:
            return None
        return {
            "rev": int(doc["rev"]),
            "window": doc.get("window") or {},
            "recent_ids": list(doc.get("recent_ids") or []),
        }

    async def save(self, key: StageKey, rev: int, checkpoint: dict[str, Any]) -> bool:
        fields = {
            "window": checkpoint["window"],
            "recent_ids": list(checkpoint["recent_ids"]),
            "rev": rev + 1,
            "saved_at": datetime.now(UTC).isoformat(),
        }
        if rev == 0:
            try:
                await self.col.insert_one({**self._id(key), **fields})
            except DuplicateKeyError:
                return False
            return True
        result = await self.col.update_one({**self._id(key), "rev": rev}, {"$set": fields})
        return result.matched_count == 1

    async def delete(self, key: StageKey) -> None:
        await self.col.delete_one(self._id(key))


def _normalised(doc: dict[str, Any]) -> dict[str, Any]:
    # nx-27017 (SQLite underneath) hands values written by $set back loosely typed: booleans as
    # 0/1 and datetimes as naive strings. Restore the types the rest of the code expects.
    doc["published"] = bool(doc.get("published"))
    at = doc.get("published_at")
    if isinstance(at, str):
        parsed = datetime.fromisoformat(at)
        doc["published_at"] = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return doc


# --- fakes -----------------------------------------------------------------------------------


class MemoryDecisionStore:
    def __init__(self) -> None:
        self.docs: dict[tuple[str, int], dict[str, Any]] = {}

    async def init(self) -> None:
        return None

    async def get(self, model_name: str, version: int) -> dict[str, Any] | None:
        doc = self.docs.get((model_name, version))
        return copy.deepcopy(doc) if doc is not None else None

    async def insert(self, doc: dict[str, Any]) -> bool:
        key = (doc["model_name"], doc["version"])
        if key in self.docs:
            return False
        self.docs[key] = copy.deepcopy(doc)
        return True

    async def mark_published(self, model_name: str, version: int, at: datetime) -> None:
        doc = self.docs.get((model_name, version))
        if doc is not None:
            doc.update(published=True, published_at=at)

    async def transition(
        self, model_name: str, version: int, stage: int, fields: dict[str, Any]
    ) -> dict[str, Any] | None:
        doc = self.docs.get((model_name, version))
        if doc is None or doc.get("stage") != stage:
            return None
        doc.update(copy.deepcopy(fields))
        return copy.deepcopy(doc)

    async def active(self, model_name: str) -> dict[str, Any] | None:
        live = [
            d for (m, _), d in self.docs.items() if m == model_name and d.get("live") in LIVE_STAGES
        ]
        return copy.deepcopy(max(live, key=lambda d: d["version"])) if live else None

    async def list(self, model_name: str | None, limit: int) -> list[dict[str, Any]]:
        docs = [d for d in self.docs.values() if model_name in (None, d["model_name"])]
        docs.sort(key=lambda d: (d["decided_at"], d["version"]), reverse=True)
        return copy.deepcopy(docs[:limit])


class MemoryLiveStats:
    def __init__(self) -> None:
        self.docs: dict[StageKey, dict[str, Any]] = {}

    async def init(self) -> None:
        return None

    async def load(self, key: StageKey) -> dict[str, Any] | None:
        doc = self.docs.get(key)
        return copy.deepcopy(doc) if doc is not None else None

    async def save(self, key: StageKey, rev: int, checkpoint: dict[str, Any]) -> bool:
        stored = self.docs.get(key)
        if (stored["rev"] if stored is not None else 0) != rev:
            return False
        self.docs[key] = {**copy.deepcopy(checkpoint), "rev": rev + 1}
        return True

    async def delete(self, key: StageKey) -> None:
        self.docs.pop(key, None)
