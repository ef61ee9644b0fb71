"""Adapters for the deployer's ports: MongoDB decisions (with their outbox) and live-window
checkpoints, verified loads from object storage. The in-memory ones are in ``testing``."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pymongo import DESCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from modelbus_contracts import ArtifactRef, DatasetRef, Event
from modelbus_ml import (
    ArtifactError,
    Dataset,
    DatasetError,
    ServableModel,
    from_csv_bytes,
    load_model,
)
from modelbus_ml.dataset import encode_labels
from modelbus_platform.artifacts import AllowPickle, ArtifactTrust, refuse_pickle
from modelbus_platform.outbox import FIELD, PENDING, MongoOutbox, outbox_doc, outbox_set
from modelbus_platform.stores import (
    IntegrityError,
    ObjectNotFound,
    ObjectStore,
    get_verified,
)

from .ports import HoldoutSpec, LoadError, StageKey

NEWEST_FIRST = [("decided_at", DESCENDING), ("version", DESCENDING)]
VIEW = {"_id": False, FIELD: False}
LIVE_STAGES = ["shadow", "canary", "watch"]


class ObjectStoreModels:
    """Loads artifacts and hold-outs from object storage, refusing any sha256 mismatch and any
    artifact ``trust`` refuses (checked before a byte is read; a pickle only if
    ``allow_pickle(model_name)``)."""

    def __init__(
        self,
        store: ObjectStore,
        trust: ArtifactTrust | None = None,
        allow_pickle: AllowPickle = refuse_pickle,
    ) -> None:
        self.store = store
        self.trust = trust or ArtifactTrust()
        self.allow_pickle = allow_pickle

    async def _read(self, what: str, key: str, sha256: str) -> bytes:
        try:
            return await get_verified(self.store, key, sha256)
        except ObjectNotFound as exc:
            raise LoadError(what, f"{key} not found in object storage") from exc
        except IntegrityError as exc:
            raise LoadError(what, f"integrity check failed: {exc}") from exc

    async def load_model(self, ref: ArtifactRef, model_name: str) -> ServableModel:
        refusal = await self.trust.refusal(ref, model_name, self.allow_pickle)
        if refusal is not None:
            raise LoadError("artifact", f"untrusted artifact: {refusal}")
        data = await self._read("artifact", ref.uri, ref.sha256)
        try:
            # any family; the sha256 is checked again before parsing/unpickling
            return load_model(data, ref.format, ref.sha256)
        except ArtifactError as exc:
            raise LoadError("artifact", f"{ref.uri}: {exc}") from exc

    async def load_dataset(self, ref: DatasetRef, spec: HoldoutSpec | None = None) -> Dataset:
        data = await self._read("hold-out", ref.uri, ref.sha256)
        try:
            return read_holdout(data, spec)
        except DatasetError as exc:
            raise LoadError("hold-out", f"{ref.uri}: {exc}") from exc

    async def ping(self) -> bool:
        return await self.store.ping()


def read_holdout(data: bytes, spec: HoldoutSpec | None) -> Dataset:
    """A hold-out CSV read as the model sees it: the model's task (not a guess from the
    labels: a regression's integer targets are not classes), its feature kinds (a zip code
    stays a category) and, for a multiclass model, its classes in the model's order, so that
    class index k of the hold-out is column k of the model's probabilities. A label outside
    the model's classes is a DatasetError. Without a spec, everything is inferred."""
    if spec is None:
        return from_csv_bytes(data)
    header = _header(data)
    kinds = {name: kind for name, kind in spec.kinds.items() if name in header}
    ds = from_csv_bytes(data, task=spec.task, kinds=kinds)
    if ds.task != "multiclass" or not spec.classes or ds.classes == spec.classes:
        return ds
    names = [ds.classes[i] for i in ds.y.tolist()]
    y, task, classes = encode_labels(names, "multiclass", spec.classes)
    return Dataset(ds.feature_names, ds.X, y, task, classes, ds.kinds)


def _header(data: bytes) -> set[str]:
    first = data.split(b"\n", 1)[0].decode("utf-8", errors="replace")
    try:
        return set(next(csv.reader(io.StringIO(first)), []))
    except csv.Error:
        return set()


class MongoDecisionStore:
    """``decisions`` collection with a unique index on (model_name, version)."""

    def __init__(self, db: AsyncDatabase, collection: str = "decisions") -> None:
        self.col = db[collection]
        self.outbox = MongoOutbox(self.col)

    async def init(self) -> None:
        await self.col.create_index([("model_name", 1), ("version", 1)], unique=True)
        await self.col.create_index(NEWEST_FIRST)
        await self.outbox.init()

    async def get(self, model_name: str, version: int) -> dict[str, Any] | None:
        doc = await self.col.find_one(
            {"model_name": model_name, "version": version}, projection=VIEW
        )
        return _normalised(doc) if doc is not None else None

    async def insert(self, doc: dict[str, Any], *, events: Sequence[Event] = ()) -> bool:
        try:
            await self.col.insert_one({**doc, **outbox_doc(events)})
        except DuplicateKeyError:
            return False
        return True

    async def transition(
        self,
        model_name: str,
        version: int,
        stage: int,
        fields: dict[str, Any],
        *,
        events: Sequence[Event] = (),
    ) -> dict[str, Any] | None:
        doc = await self.col.find_one_and_update(
            {"model_name": model_name, "version": version, "stage": stage},
            {"$set": {**fields, **outbox_set(events)}},
            projection=VIEW,
            return_document=ReturnDocument.AFTER,
        )
        return _normalised(doc) if doc is not None else None

    async def active(self, model_name: str) -> dict[str, Any] | None:
        cursor = (
            self.col.find(
                {"model_name": model_name, "live": {"$in": LIVE_STAGES}},
                projection=VIEW,
            )
            .sort("version", DESCENDING)
            .limit(1)
        )
        docs = await cursor.to_list(length=1)
        return _normalised(docs[0]) if docs else None

    async def list(self, model_name: str | None, limit: int) -> list[dict[str, Any]]:
        query = {"model_name": model_name} if model_name else {}
        cursor = self.col.find(query, projection=VIEW).sort(NEWEST_FIRST).limit(limit)
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
        doc = await self.col.find_one(self._id(key), projection=VIEW)
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
    """``published``: nothing of the decision waits in its outbox any more."""
    doc["published"] = doc.pop(PENDING, None) is None
    return doc
