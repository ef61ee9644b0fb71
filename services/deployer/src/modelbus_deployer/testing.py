"""Test doubles of the deployer's ports, for unit tests: decisions (with their outbox) and
live-window checkpoints in memory, with the contracts of the MongoDB adapters."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from modelbus_contracts import Event
from modelbus_platform.testing import MemoryOutbox

from .adapters import LIVE_STAGES
from .ports import StageKey


class MemoryDecisionStore:
    def __init__(self, outbox: MemoryOutbox | None = None) -> None:
        self.outbox = outbox or MemoryOutbox()
        self.docs: dict[tuple[str, int], dict[str, Any]] = {}

    async def init(self) -> None:
        return None

    def _view(self, doc: dict[str, Any] | None) -> dict[str, Any] | None:
        if doc is None:
            return None
        key = (doc["model_name"], doc["version"])
        waiting = any(p.doc_id == key for p in self.outbox.waiting)
        return {**copy.deepcopy(doc), "published": not waiting}

    async def get(self, model_name: str, version: int) -> dict[str, Any] | None:
        return self._view(self.docs.get((model_name, version)))

    async def insert(self, doc: dict[str, Any], *, events: Sequence[Event] = ()) -> bool:
        key = (doc["model_name"], doc["version"])
        if key in self.docs:
            return False
        self.docs[key] = copy.deepcopy(doc)
        self.outbox.add(events, doc_id=key)
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
        doc = self.docs.get((model_name, version))
        if doc is None or doc.get("stage") != stage:
            return None
        doc.update(copy.deepcopy(fields))
        self.outbox.add(events, doc_id=(model_name, version))
        return self._view(doc)

    async def active(self, model_name: str) -> dict[str, Any] | None:
        live = [
            d for (m, _), d in self.docs.items() if m == model_name and d.get("live") in LIVE_STAGES
        ]
        return self._view(max(live, key=lambda d: d["version"])) if live else None

    async def list(self, model_name: str | None, limit: int) -> list[dict[str, Any]]:
        docs = [d for d in self.docs.values() if model_name in (None, d["model_name"])]
        docs.sort(key=lambda d: (d["decided_at"], d["version"]), reverse=True)
        return [v for d in docs[:limit] if (v := self._view(d)) is not None]


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
