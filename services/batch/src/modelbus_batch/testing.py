"""In-memory stand-ins for the batch service's tests and benchmark (not used in production)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymongo.errors import PyMongoError

from modelbus_contracts import Event
from modelbus_platform.testing import MemoryOutbox

from .adapters import UNFINISHED
from .domain import BatchJob


class MemoryJobStore:
    """In-memory job records for unit tests (same semantics as ``MongoJobStore``)."""

    def __init__(self, outbox: MemoryOutbox | None = None) -> None:
        self.outbox = outbox or MemoryOutbox()
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

    async def update(
        self, job_id: str, fields: dict[str, Any], *, events: Sequence[Event] = ()
    ) -> None:
        self._check()
        self.jobs[job_id].update(fields)
        self.outbox.add(events, doc_id=job_id)

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
