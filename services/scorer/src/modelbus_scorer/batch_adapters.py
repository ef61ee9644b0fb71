"""Adapters for the batch ports: job records in MongoDB (``batch_jobs``) or in memory, and
named versions read from the registry over HTTP (or a fake).

Only batch scoring touches MongoDB; the online path never does.
"""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import ValidationError
from pymongo import DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError

from modelbus_contracts.api import VersionView

from .batch import BatchJob
from .ports import RegistryUnavailable

UNFINISHED = ("queued", "running")


class MongoJobStore:
    """One document per job (``job_id`` unique); times are epoch seconds."""

    def __init__(self, db: AsyncDatabase, collection: str = "batch_jobs") -> None:
        self.col = db[collection]

    async def init(self) -> None:
        await self.col.create_index("job_id", unique=True)
        await self.col.create_index([("model_name", 1), ("created_at", DESCENDING)])

    async def create(self, job: BatchJob) -> bool:
        try:
            await self.col.insert_one(job.model_dump(mode="json"))
        except DuplicateKeyError:
            return False
        return True

    async def get(self, job_id: str) -> BatchJob | None:
        doc = await self.col.find_one({"job_id": job_id}, {"_id": 0})
        return None if doc is None else BatchJob.model_validate(doc)

    async def update(self, job_id: str, fields: dict[str, Any]) -> None:
        await self.col.update_one({"job_id": job_id}, {"$set": fields})

    async def list(self, model_name: str | None = None, limit: int = 50) -> list[BatchJob]:
        query = {} if model_name is None else {"model_name": model_name}
        cursor = self.col.find(query, {"_id": 0}).sort("created_at", DESCENDING).limit(limit)
        return [BatchJob.model_validate(doc) async for doc in cursor]

    async def unfinished(self, instance: str) -> list[BatchJob]:
        jobs = []
        for state in UNFINISHED:  # plain equality queries: the simplest thing every server has
            cursor = self.col.find({"instance": instance, "state": state}, {"_id": 0})
            jobs += [BatchJob.model_validate(doc) async for doc in cursor]
        return sorted(jobs, key=lambda job: job.created_at)


class MemoryJobStore:
    """In-memory job records for unit tests (same semantics as ``MongoJobStore``)."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.down = False

    async def init(self) -> None:
        self._check()

    async def create(self, job: BatchJob) -> bool:
        self._check()
        if job.job_id in self.jobs:
            return False
        self.jobs[job.job_id] = job.model_dump(mode="json")
        return True

    async def get(self, job_id: str) -> BatchJob | None:
        self._check()
        doc = self.jobs.get(job_id)
        return None if doc is None else BatchJob.model_validate(doc)

    async def update(self, job_id: str, fields: dict[str, Any]) -> None:
        self._check()
        self.jobs[job_id].update(fields)

    async def list(self, model_name: str | None = None, limit: int = 50) -> list[BatchJob]:
        self._check()
        docs = [d for d in self.jobs.values() if model_name in (None, d["model_name"])]
        docs.sort(key=lambda d: d["created_at"], reverse=True)
        return [BatchJob.model_validate(d) for d in docs[:limit]]

    async def unfinished(self, instance: str) -> list[BatchJob]:
        self._check()
        docs = [
            d for d in self.jobs.values() if d["instance"] == instance and d["state"] in UNFINISHED
        ]
        return [BatchJob.model_validate(d) for d in sorted(docs, key=lambda d: d["created_at"])]

    def _check(self) -> None:
        if self.down:
            raise PyMongoError("fake job store is down")


class HttpVersions:
    """``GET {registry_url}/models/{name}/versions/{version}``."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout_s, transport=transport
        )

    async def version(self, name: str, version: int) -> VersionView | None:
        path = f"/models/{name}/versions/{version}"
        try:
            response = await self.client.get(path)
        except httpx.HTTPError as exc:
            raise RegistryUnavailable(f"GET {path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise RegistryUnavailable(f"GET {path}: HTTP {response.status_code}")
        try:
            return VersionView.model_validate_json(response.content)
        except ValidationError as exc:
            raise RegistryUnavailable(f"GET {path}: not a VersionView: {exc}") from exc

    async def close(self) -> None:
        await self.client.aclose()


class FakeVersions:
    """``records[(name, version)] = VersionView`` for unit tests."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, int], VersionView] = {}

    async def version(self, name: str, version: int) -> VersionView | None:
        return self.records.get((name, version))
