"""Test doubles of the registry's ports, for unit tests: the repository in memory, with the
same contract as the MongoDB adapter (the shared port suite runs against both)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from modelbus_contracts import Event
from modelbus_platform.testing import MemoryOutbox

from .domain import STATUS_REGISTERED, new_model


class MemoryRegistryRepository:
    """The same contract in memory (unit tests). Copies in and out, like a real store."""

    def __init__(self, outbox: MemoryOutbox | None = None) -> None:
        self.outbox = outbox or MemoryOutbox()
        self.models: dict[str, dict[str, Any]] = {}
        self.versions: dict[tuple[str, int], dict[str, Any]] = {}
        self.audit: list[dict[str, Any]] = []
        self.policies: dict[tuple[str, int], dict[str, Any]] = {}

    async def init(self) -> None:
        return None

    async def ping(self) -> bool:
        return True

    async def get_model(self, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.models.get(name))

    async def list_models(self) -> list[dict[str, Any]]:
        return [copy.deepcopy(self.models[n]) for n in sorted(self.models)]

    async def allocate_version(self, name: str, now: datetime) -> int:
        model = self.models.setdefault(name, new_model(name, now))
        model["latest_version"] += 1
        model["updated_at"] = now
        return int(model["latest_version"])

    async def cas_aliases(
        self,
        name: str,
        expected: dict[str, int | None],
        new: dict[str, int | None],
        now: datetime,
        *,
        rollout: dict[str, Any] | None = None,
        events: Sequence[Event] = (),
    ) -> dict[str, Any] | None:
        model = self.models.get(name)
        if model is None or any(model["aliases"].get(a) != v for a, v in expected.items()):
            return None
        model["aliases"].update(new)
        model["alias_revision"] += 1
        model["updated_at"] = now
        if rollout is not None:
            model["rollout"] = copy.deepcopy(rollout)
        self.outbox.add(events)
        return copy.deepcopy(model)

    async def set_rollout(
        self, name: str, rollout: dict[str, Any], now: datetime, *, events: Sequence[Event] = ()
    ) -> None:
        model = self.models.get(name)
        if model is not None:
            model.update(rollout=copy.deepcopy(rollout), updated_at=now)
            self.outbox.add(events)

    async def insert_version(self, doc: dict[str, Any], *, events: Sequence[Event] = ()) -> bool:
        name, version, run_id = doc["model_name"], doc["version"], doc["run_id"]
        sha = doc.get("artifact_sha256")
        taken = (name, version) in self.versions or any(
            v["model_name"] == name
            and (v["run_id"] == run_id or (sha is not None and v.get("artifact_sha256") == sha))
            for v in self.versions.values()
        )
        if taken:
            return False
        self.versions[(name, version)] = copy.deepcopy(doc)
        self.outbox.add(events)
        return True

    async def get_version(self, name: str, version: int) -> dict[str, Any] | None:
        return copy.deepcopy(self.versions.get((name, version)))

    async def find_version_by_run(self, name: str, run_id: str) -> dict[str, Any] | None:
        for doc in self.versions.values():
            if doc["model_name"] == name and doc["run_id"] == run_id:
                return copy.deepcopy(doc)
        return None

    async def find_version_by_artifact(self, name: str, sha256: str) -> dict[str, Any] | None:
        for (n, _), doc in sorted(self.versions.items()):
            if n == name and (doc.get("artifact") or {}).get("sha256") == sha256:
                return copy.deepcopy(doc)
        return None

    async def list_versions(self, name: str) -> list[dict[str, Any]]:
        docs = [v for (n, _), v in sorted(self.versions.items()) if n == name]
        return copy.deepcopy(docs)

    async def count_versions(self, name: str) -> int:
        return sum(1 for n, _ in self.versions if n == name)

    async def update_version(self, name: str, version: int, fields: dict[str, Any]) -> None:
        doc = self.versions.get((name, version))
        if doc is not None:
            doc.update(copy.deepcopy(fields))

    async def versions_in_status(self, status: str, limit: int) -> list[dict[str, Any]]:
        docs = [v for _, v in sorted(self.versions.items()) if v.get("status") == status]
        return copy.deepcopy(docs[:limit])

    async def sweep_version(
        self,
        name: str,
        version: int,
        reannounced: int,
        fields: dict[str, Any],
        *,
        events: Sequence[Event] = (),
    ) -> bool:
        doc = self.versions.get((name, version))
        if doc is None or doc.get("status") != STATUS_REGISTERED:
            return False
        if doc.get("reannounced") != reannounced:  # a doc without the count: like MongoDB
            return False
        doc.update(copy.deepcopy(fields))
        self.outbox.add(events)
        return True

    async def latest_policy(self, name: str) -> dict[str, Any] | None:
        revisions = [r for (n, r) in self.policies if n == name]
        return copy.deepcopy(self.policies[(name, max(revisions))]) if revisions else None

    async def insert_policy(self, doc: dict[str, Any], *, events: Sequence[Event] = ()) -> bool:
        key = (doc["model_name"], doc["revision"])
        if key in self.policies:
            return False
        self.policies[key] = copy.deepcopy(doc)
        self.outbox.add(events)
        return True

    async def latest_policies(self) -> list[dict[str, Any]]:
        names = sorted({n for (n, _) in self.policies})
        return [doc for n in names if (doc := await self.latest_policy(n)) is not None]

    async def list_policies(self, name: str, limit: int) -> list[dict[str, Any]]:
        revisions = sorted((r for (n, r) in self.policies if n == name), reverse=True)
        return [copy.deepcopy(self.policies[(name, r)]) for r in revisions[:limit]]

    async def append_audit(self, record: dict[str, Any]) -> int:
        seq = len(self.audit) + 1
        self.audit.append({**copy.deepcopy(record), "seq": seq})
        return seq

    async def list_audit(self, model_name: str | None, limit: int) -> list[dict[str, Any]]:
        rows = [r for r in reversed(self.audit) if model_name in (None, r["model_name"])]
        return copy.deepcopy(rows[:limit])
