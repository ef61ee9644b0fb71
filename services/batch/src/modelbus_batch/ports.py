"""The batch service's own port: where job records live. The registry
(``modelbus_platform.registry.Registry``), the object store and the publisher are the
platform's ports."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from modelbus_contracts import Event

from .domain import BatchJob


class JobStoreUnavailable(Exception):
    """The job store did not answer: batch jobs cannot be accepted or read right now."""


class JobStore(Protocol):
    """Batch job records; ``job_id`` is unique (the idempotency key)."""

    async def init(self) -> None: ...

    async def create(self, job: BatchJob) -> bool:
        """Insert; False (and no change) if a job with this id already exists."""
        ...

    async def get(self, job_id: str) -> BatchJob | None: ...

    async def update(
        self, job_id: str, fields: dict[str, Any], *, events: Sequence[Event] = ()
    ) -> None:
        """Set ``fields``, with ``events`` in the same write (the outbox)."""
        ...

    async def list(self, model_name: str | None = None, limit: int = 50) -> list[BatchJob]:
        """Newest first."""
        ...

    async def unfinished(self, instance: str) -> list[BatchJob]:
        """Jobs this instance accepted but did not finish (queued or running)."""
        ...
