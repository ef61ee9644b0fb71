"""Adapters for the trainer's ports: MongoDB (PyMongo async); the in-memory ones with the same
behaviour for unit tests are in ``testing``.

Timestamps go to MongoDB as fixed-width UTC ISO strings (they sort and compare like the times
they name): nx-27017 stores a datetime written by ``$set`` on an existing document as a naive
string, so native dates would compare inconsistently. Adapters convert at the boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from modelbus_contracts import Event, LabelObserved, PredictionMade, ServedBy
from modelbus_platform.outbox import FIELD, PENDING, MongoOutbox, outbox_set

from .domain import ACTIVE_STATES, RunState

COUNTED_SERVERS: tuple[ServedBy, ...] = ("champion", "fallback")
RUN_TIMES = ("created_at", "started_at", "data_ready_at", "finished_at")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def to_stored_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime(TIME_FORMAT)


def from_stored_time(value: str | datetime | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.strptime(value, TIME_FORMAT).replace(tzinfo=UTC)


def _store_times(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: to_stored_time(v) if isinstance(v, datetime) else v for k, v in doc.items()}


def _load_times(doc: dict[str, Any] | None, keys: tuple[str, ...]) -> dict[str, Any] | None:
    if doc is not None:
        for key in keys:
            if key in doc:
                doc[key] = from_stored_time(doc[key])
    return doc


def prediction_fields(event: PredictionMade) -> dict[str, Any]:
    return {
        "model_name": event.model_name,
        "features": dict(event.features),
        "version": event.version,
        "predicted_at": event.occurred_at,
        "served_by": event.served_by,
    }


def label_fields(event: LabelObserved) -> dict[str, Any]:
    return {"model_name": event.model_name, "label": event.label, "labelled_at": event.occurred_at}


def _complete_query(model_name: str, since: datetime | None) -> dict[str, Any]:
    query: dict[str, Any] = {
        "model_name": model_name,
        "features": {"$exists": True},
        "label": {"$exists": True},
    }
    if since is not None:
        query["predicted_at"] = {"$gte": since}
    return query


FEEDBACK_TIMES = ("predicted_at", "labelled_at")


def _mongo_complete_query(model_name: str, since: datetime | None) -> dict[str, Any]:
    query = _complete_query(model_name, None)
    if since is not None:
        query["predicted_at"] = {"$gte": to_stored_time(since)}
    return query


# --- MongoDB --------------------------------------------------------------------------------


class MongoFeedbackStore:
    """Feedback as two insert-only collections (predictions, labels) joined at read time.

    Inserting in bulk is an order of magnitude faster than one upsert per event on the
    MongoDB-wire server, and insert-only keeps re-deliveries harmless (unique prediction ids;
    the first label for a prediction wins).
    """

    def __init__(self, db: AsyncDatabase, collection: str = "feedback") -> None:
        self.predictions = db[f"{collection}_predictions"]
        self.labels = db[f"{collection}_labels"]

    async def init(self) -> None:
        await self.predictions.create_index("prediction_id", unique=True)
        await self.predictions.create_index(
            [("model_name", ASCENDING), ("predicted_at", DESCENDING)]
        )
        await self.labels.create_index("prediction_id", unique=True)

    @staticmethod
    async def _insert(col: Any, docs: list[dict[str, Any]]) -> None:
        if not docs:
            return
        try:
            await col.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                raise

    async def record_predictions(self, events: list[PredictionMade]) -> None:
        docs = [
            {
                **prediction_fields(e),
                "prediction_id": e.prediction_id,
                "predicted_at": e.occurred_at.timestamp(),
            }
            for e in events
        ]
        await self._insert(self.predictions, docs)

    async def record_labels(self, events: list[LabelObserved]) -> None:
        docs = [
            {
                **label_fields(e),
                "prediction_id": e.prediction_id,
                "labelled_at": e.occurred_at.timestamp(),
            }
            for e in events
        ]
        await self._insert(self.labels, docs)

    async def record_prediction(self, event: PredictionMade) -> None:
        await self.record_predictions([event])

    async def record_label(self, event: LabelObserved) -> None:
        await self.record_labels([event])

    async def _joined(
        self, model_name: str, since: datetime | None, until: datetime | None = None
    ) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"model_name": model_name}
        # epoch seconds: the MongoDB-wire server compares ISO strings and dates coarsely
        window: dict[str, float] = {}
        if since is not None:
            window["$gte"] = since.timestamp()
        if until is not None:
            window["$lt"] = until.timestamp()
        if window:
            query["predicted_at"] = window
        predictions = await self.predictions.find(query, {"_id": 0}).to_list(length=None)
        labels: dict[str, dict[str, Any]] = {}
        ids = [p["prediction_id"] for p in predictions]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            async for label in self.labels.find({"prediction_id": {"$in": chunk}}, {"_id": 0}):
                labels[label["prediction_id"]] = label
        rows = []
        for p in predictions:
            label = labels.get(p["prediction_id"])
            if label is not None:
                rows.append({**p, "label": label["label"], "labelled_at": label["labelled_at"]})
        rows.sort(key=lambda r: (r["predicted_at"], r["prediction_id"]))
        return rows

    async def count_complete(
        self, model_name: str, since: datetime | None = None, until: datetime | None = None
    ) -> int:
        return len(await self._joined(model_name, since, until))

    async def count_all(self, model_name: str) -> int:
        return await self.predictions.count_documents({"model_name": model_name})

    async def complete_rows(
        self, model_name: str, since: datetime | None, limit: int, until: datetime | None = None
    ) -> list[dict[str, Any]]:
        rows = (await self._joined(model_name, since, until))[-limit:] if limit > 0 else []
        for row in rows:
            for key in FEEDBACK_TIMES:
                row[key] = datetime.fromtimestamp(row[key], UTC)
        return rows


RUN_VIEW = {"_id": 0, FIELD: 0, PENDING: 0}


class MongoRunStore:
    def __init__(self, db: AsyncDatabase, collection: str = "runs") -> None:
        self.col = db[collection]
        self.claims = db[f"{collection}_claims"]  # _id: the dedupe key
        self.outbox = MongoOutbox(self.col)

    async def init(self) -> None:
        await self.col.create_index("run_id", unique=True)
        await self.col.create_index([("model_name", ASCENDING), ("created_at", DESCENDING)])
        await self.outbox.init()

    async def create(self, run: dict[str, Any]) -> bool:
        try:
            await self.col.insert_one(_store_times(run))
        except DuplicateKeyError:
            return False
        return True

    async def get(self, run_id: str) -> dict[str, Any] | None:
        return _load_times(await self.col.find_one({"run_id": run_id}, RUN_VIEW), RUN_TIMES)

    async def update(
        self, run_id: str, fields: dict[str, Any], *, events: Sequence[Event] = ()
    ) -> None:
        await self.col.update_one(
            {"run_id": run_id}, {"$set": {**_store_times(fields), **outbox_set(events)}}
        )

    async def list(self, model_name: str | None, limit: int) -> list[dict[str, Any]]:
        query = {"model_name": model_name} if model_name else {}
        cursor = self.col.find(query, RUN_VIEW).sort("created_at", DESCENDING).limit(limit)
        return [_load_times(r, RUN_TIMES) for r in await cursor.to_list(length=limit)]

    async def active(self, model_name: str | None = None) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"state": {"$in": list(ACTIVE_STATES)}}
        if model_name:
            query["model_name"] = model_name
        cursor = self.col.find(query, RUN_VIEW).sort("created_at", ASCENDING)
        return [_load_times(r, RUN_TIMES) for r in await cursor.to_list(length=None)]

    async def last_drift_run_created(self, model_name: str) -> datetime | None:
        query = {
            "model_name": model_name,
            "trigger": "drift",
            "state": {"$in": [s.value for s in RunState if s != RunState.SKIPPED]},
        }
        cursor = self.col.find(query, {"_id": 0}).sort("created_at", DESCENDING).limit(1)
        docs = await cursor.to_list(length=1)
        return from_stored_time(docs[0]["created_at"]) if docs else None

    async def insert_claim(self, key: str, claim: dict[str, Any]) -> bool:
        try:
            await self.claims.insert_one({**_store_times(claim), "_id": key})
        except DuplicateKeyError:
            return False
        return True

    async def get_claim(self, key: str) -> dict[str, Any] | None:
        return _load_times(await self.claims.find_one({"_id": key}, {"_id": 0}), ("at",))

    async def replace_claim(self, key: str, holder_run_id: str, claim: dict[str, Any]) -> bool:
        taken = await self.claims.find_one_and_update(
            {"_id": key, "run_id": holder_run_id}, {"$set": _store_times(claim)}
        )
        return taken is not None

    async def release_claim(self, key: str, run_id: str) -> None:
        await self.claims.delete_one({"_id": key, "run_id": run_id})


class MongoLockStore:
    def __init__(self, db: AsyncDatabase, collection: str = "locks") -> None:
        self.col = db[collection]

    async def acquire(self, model_name: str, run_id: str, now: datetime, ttl_s: float) -> bool:
        try:
            doc = {"_id": model_name, "run_id": run_id, "acquired_at": to_stored_time(now)}
            await self.col.insert_one(doc)
            return True
        except DuplicateKeyError:
            pass
        update = {"$set": {"run_id": run_id, "acquired_at": to_stored_time(now)}}
        mine = await self.col.find_one_and_update({"_id": model_name, "run_id": run_id}, update)
        if mine is not None:
            return True
        cutoff = to_stored_time(now - timedelta(seconds=ttl_s))
        stale = {"_id": model_name, "acquired_at": {"$lt": cutoff}}
        return await self.col.find_one_and_update(stale, update) is not None

    async def release(self, model_name: str, run_id: str) -> None:
        await self.col.delete_one({"_id": model_name, "run_id": run_id})

    async def holder(self, model_name: str) -> dict[str, Any] | None:
        return _load_times(await self.col.find_one({"_id": model_name}), ("acquired_at",))
