"""The trainer's ports: where feedback, runs and per-model locks live. Adapters: MongoDB in
``adapters``, in-memory fakes for unit tests in ``testing``; object storage and publishing use
the platform's ``ObjectStore``, ``Publisher`` and outbox."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from modelbus_contracts import Event, LabelObserved, PredictionMade


class FeedbackStore(Protocol):
    """Predictions joined with their labels on prediction_id (either may arrive first)."""

    async def init(self) -> None: ...

    async def record_prediction(self, event: PredictionMade) -> None: ...

    async def record_label(self, event: LabelObserved) -> None: ...

    async def record_predictions(self, events: list[PredictionMade]) -> None: ...

    async def record_labels(self, events: list[LabelObserved]) -> None: ...

    async def count_complete(
        self, model_name: str, since: datetime | None = None, until: datetime | None = None
    ) -> int:
        """Rows with features and label predicted in [since, until)."""
        ...

    async def count_all(self, model_name: str) -> int: ...

    async def complete_rows(
        self, model_name: str, since: datetime | None, limit: int, until: datetime | None = None
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` rows with features and label predicted in [since, until),
        returned oldest first."""
        ...


class RunStore(Protocol):
    async def init(self) -> None: ...

    async def create(self, run: dict[str, Any]) -> bool:
        """Insert a run; False if a run with this run_id already exists."""
        ...

    async def get(self, run_id: str) -> dict[str, Any] | None: ...

    async def update(
        self, run_id: str, fields: dict[str, Any], *, events: Sequence[Event] = ()
    ) -> None:
        """Set ``fields``, with ``events`` in the same write (the outbox)."""
        ...

    async def list(self, model_name: str | None, limit: int) -> list[dict[str, Any]]: ...

    async def active(self, model_name: str | None = None) -> list[dict[str, Any]]: ...

    async def last_drift_run_created(self, model_name: str) -> datetime | None:
        """When the newest non-skipped drift-triggered run of the model was created."""
        ...

    # claims on dedupe keys (``domain.dedupe_key``): one run per key within the window

    async def insert_claim(self, key: str, claim: dict[str, Any]) -> bool:
        """Take ``key`` for ``claim["run_id"]``; False if a claim on it exists (atomic: of two
        concurrent inserts one wins)."""
        ...

    async def get_claim(self, key: str) -> dict[str, Any] | None: ...

    async def replace_claim(self, key: str, holder_run_id: str, claim: dict[str, Any]) -> bool:
        """Compare-and-set: ``claim`` replaces the claim on ``key`` only while
        ``holder_run_id`` still holds it."""
        ...

    async def release_claim(self, key: str, run_id: str) -> None:
        """Drop the claim on ``key`` if ``run_id`` holds it."""
        ...


class LockStore(Protocol):
    """One training run in flight per model."""

    async def acquire(self, model_name: str, run_id: str, now: datetime, ttl_s: float) -> bool:
        """Take the lock, refresh it if ``run_id`` holds it, or take over a stale one."""
        ...

    async def release(self, model_name: str, run_id: str) -> None: ...

    async def holder(self, model_name: str) -> dict[str, Any] | None: ...
