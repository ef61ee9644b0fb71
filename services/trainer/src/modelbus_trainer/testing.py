"""Test doubles of the trainer's ports, for unit tests: feedback, runs (with their outbox)
and locks in memory, with the behaviour of the MongoDB adapters."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from modelbus_contracts import Event, LabelObserved, PredictionMade
from modelbus_platform.testing import MemoryOutbox

from .adapters import label_fields, prediction_fields
from .domain import ACTIVE_STATES, RunState


class MemoryFeedbackStore:
    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}

    async def init(self) -> None:
        return None

    def _upsert(self, prediction_id: str, fields: dict[str, Any]) -> None:
        self.docs.setdefault(prediction_id, {"prediction_id": prediction_id}).update(fields)

    async def record_prediction(self, event: PredictionMade) -> None:
        self._upsert(event.prediction_id, prediction_fields(event))

    async def record_label(self, event: LabelObserved) -> None:
        self._upsert(event.prediction_id, label_fields(event))

    async def record_predictions(self, events: list[PredictionMade]) -> None:
        for event in events:
            await self.record_prediction(event)

    async def record_labels(self, events: list[LabelObserved]) -> None:
        for event in events:
            await self.record_label(event)

    def _complete(
        self, model_name: str, since: datetime | None, until: datetime | None = None
    ) -> list[dict[str, Any]]:
        return [
            d
            for d in self.docs.values()
            if d.get("model_name") == model_name
            and "features" in d
            and "label" in d
            and (since is None or d["predicted_at"] >= since)
            and (until is None or d["predicted_at"] < until)
        ]

    async def count_complete(
        self, model_name: str, since: datetime | None = None, until: datetime | None = None
    ) -> int:
        return len(self._complete(model_name, since, until))

    async def count_all(self, model_name: str) -> int:
        return sum(
            1 for d in self.docs.values() if d.get("model_name") == model_name and "features" in d
        )

    async def complete_rows(
        self, model_name: str, since: datetime | None, limit: int, until: datetime | None = None
    ) -> list[dict[str, Any]]:
        if limit <= 0:
            return []
        rows = sorted(
            self._complete(model_name, since, until),
            key=lambda d: (d["predicted_at"], d["prediction_id"]),
        )
        return copy.deepcopy(rows[-limit:])


class MemoryRunStore:
    def __init__(self, outbox: MemoryOutbox | None = None) -> None:
        self.outbox = outbox or MemoryOutbox()
        self.runs: dict[str, dict[str, Any]] = {}
        self.claims: dict[str, dict[str, Any]] = {}

    async def init(self) -> None:
        return None

    async def create(self, run: dict[str, Any]) -> bool:
        if run["run_id"] in self.runs:
            return False
        self.runs[run["run_id"]] = copy.deepcopy(run)
        return True

    async def get(self, run_id: str) -> dict[str, Any] | None:
        run = self.runs.get(run_id)
        return copy.deepcopy(run) if run else None

    async def update(
        self, run_id: str, fields: dict[str, Any], *, events: Sequence[Event] = ()
    ) -> None:
        self.runs[run_id].update(copy.deepcopy(fields))
        self.outbox.add(events, doc_id=run_id)

    async def list(self, model_name: str | None, limit: int) -> list[dict[str, Any]]:
        runs = [r for r in self.runs.values() if not model_name or r["model_name"] == model_name]
        runs.sort(key=lambda r: r["created_at"], reverse=True)
        return copy.deepcopy(runs[:limit])

    async def active(self, model_name: str | None = None) -> list[dict[str, Any]]:
        runs = [
            r
            for r in self.runs.values()
            if r["state"] in ACTIVE_STATES and (not model_name or r["model_name"] == model_name)
        ]
        return copy.deepcopy(sorted(runs, key=lambda r: r["created_at"]))

    async def last_drift_run_created(self, model_name: str) -> datetime | None:
        times = [
            r["created_at"]
            for r in self.runs.values()
            if r["model_name"] == model_name
            and r["trigger"] == "drift"
            and r["state"] != RunState.SKIPPED
        ]
        return max(times, default=None)

    async def insert_claim(self, key: str, claim: dict[str, Any]) -> bool:
        if key in self.claims:
            return False
        self.claims[key] = copy.deepcopy(claim)
        return True

    async def get_claim(self, key: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.claims.get(key))

    async def replace_claim(self, key: str, holder_run_id: str, claim: dict[str, Any]) -> bool:
        if self.claims.get(key, {}).get("run_id") != holder_run_id:
            return False
        self.claims[key] = copy.deepcopy(claim)
        return True

    async def release_claim(self, key: str, run_id: str) -> None:
        if self.claims.get(key, {}).get("run_id") == run_id:
            del self.claims[key]


class MemoryLockStore:
    def __init__(self) -> None:
        self.locks: dict[str, dict[str, Any]] = {}

    async def acquire(self, model_name: str, run_id: str, now: datetime, ttl_s: float) -> bool:
        held = self.locks.get(model_name)
        free = (
            held is None
            or held["run_id"] == run_id
            or held["acquired_at"] < now - timedelta(seconds=ttl_s)
        )
        if free:
            self.locks[model_name] = {"_id": model_name, "run_id": run_id, "acquired_at": now}
        return free

    async def release(self, model_name: str, run_id: str) -> None:
        if self.locks.get(model_name, {}).get("run_id") == run_id:
            del self.locks[model_name]

    async def holder(self, model_name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.locks.get(model_name))
