"""Adapters for the batch service's port: job records in MongoDB (``batch_jobs``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymongo import DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from modelbus_contracts import Event
from modelbus_platform.outbox import FIELD, PENDING, MongoOutbox, outbox_set

from .domain import BatchJob

UNFINISHED = ("queued", "running")
VIEW = {"_id": 0, FIELD: 0, PENDING: 0}


class MongoJobStore:
    """One document per job (``job_id`` unique); times are epoch seconds."""

    def __init__(self, db: AsyncDatabase, collection: str = "batch_jobs") -> None:
        self.col = db[collection]
        self.outbox = MongoOutbox(self.col)

    async def init(self) -> None:
        await self.col.create_index("job_id", unique=True)
        await self.col.create_index([("model_name", 1), ("created_at", DESCENDING)])
        await self.outbox.init()

    async def create(self, job: BatchJob) -> bool:
        try:
            await self.col.insert_one(job.model_dump(mode="json"))
        except DuplicateKeyError:
            return False
        return True

    async def get(self, job_id: str) -> BatchJob | None:
        doc = await self.col.find_one({"job_id": job_id}, VIEW)
        return None if doc is None else BatchJob.model_validate(doc)

    async def update(
        self, job_id: str, fields: dict[str, Any], *, events: Sequence[Event] = ()
    ) -> None:
        await self.col.update_one({"job_id": job_id}, {"$set": {**fields, **outbox_set(events)}})

    async def list(self, model_name: str | None = None, limit: int = 50) -> list[BatchJob]:
        query = {} if model_name is None else {"model_name": model_name}
        cursor = self.col.find(query, VIEW).sort("created_at", DESCENDING).limit(limit)
        return [BatchJob.model_validate(doc) async for doc in cursor]

    async def unfinished(self, instance: str) -> list[BatchJob]:
        jobs = []
        for state in UNFINISHED:  # plain equality queries: the simplest thing every server has
            cursor = self.col.find({"instance": instance, "state": state}, VIEW)
            jobs += [BatchJob.model_validate(doc) async for doc in cursor]
        return sorted(jobs, key=lambda job: job.created_at)
