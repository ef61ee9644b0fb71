"""One version per artifact: a run whose artifact is byte-identical to a version's registers
nothing new, emits nothing and is audited with the version it duplicates, also when two such
runs race."""

from __future__ import annotations

import asyncio

import pytest

from modelbus_contracts import ModelRegistered
from modelbus_platform.settings import ServiceSettings
from modelbus_platform.stores import LocalObjectStore, connect_mongo
from modelbus_platform.testing import InlineRelay, RecordingPublisher
from modelbus_registry.adapters import MongoRegistryRepository
from modelbus_registry.service import RegistryService

MODEL = "churn"


async def _trained(wired, mk, seed=0):
    ref = await mk.put_artifact(wired.store, MODEL, seed=seed)
    return mk.trained(MODEL, ref)


async def test_twenty_runs_of_one_artifact_make_one_version(wired, mk):
    events = [await _trained(wired, mk) for _ in range(20)]
    registered = [await wired.service.register(e) for e in events]
    assert [r is not None for r in registered] == [True] + [False] * 19
    versions = await wired.service.list_versions(MODEL)
    assert [(v.version, v.run_id) for v in versions] == [(1, events[0].run_id)]
    assert wired.published.of(ModelRegistered) == [registered[0]]
    audit = [r for r in await wired.service.audit(MODEL, 100)]
    duplicates = [r for r in audit if r.action == "registration_duplicate_artifact"]
    assert len(duplicates) == 19 and {r.version for r in duplicates} == {1}
    assert {r.details["run_id"] for r in duplicates} == {e.run_id for e in events[1:]}
    assert {r.details["existing_run_id"] for r in duplicates} == {events[0].run_id}
    assert "byte-identical to version 1's" in duplicates[0].reason


async def test_another_artifact_is_another_version(wired, mk):
    await wired.service.register(await _trained(wired, mk, seed=0))
    second = await wired.service.register(await _trained(wired, mk, seed=1))
    assert second is not None and second.version == 2
    # the same bytes under another model are that model's own version
    ref = await mk.put_artifact(wired.store, "other", seed=0)
    assert (await wired.service.register(mk.trained("other", ref))).version == 1


async def test_concurrent_runs_with_one_artifact_register_one_version(wired, mk):
    events = [await _trained(wired, mk) for _ in range(4)]
    outcomes = await asyncio.gather(*(wired.service.register(e) for e in events))
    assert sum(o is not None for o in outcomes) == 1
    assert len(await wired.service.list_versions(MODEL)) == 1
    assert len(wired.published.of(ModelRegistered)) == 1
    duplicates = [
        r
        for r in await wired.service.audit(MODEL, 100)
        if r.action == "registration_duplicate_artifact"
    ]
    assert len(duplicates) == 3
    # they raced past the first check: the store's uniqueness decided (a number went unused)
    assert any("unused_version_number" in r.details for r in duplicates)


async def test_a_version_is_found_by_its_artifact(wired, mk):
    event = await _trained(wired, mk)
    await wired.service.register(event)
    doc = await wired.repo.find_version_by_artifact(MODEL, event.artifact.sha256)
    assert doc["version"] == 1 and doc["artifact_sha256"] == event.artifact.sha256
    assert await wired.repo.find_version_by_artifact(MODEL, "0" * 64) is None


@pytest.mark.integration
async def test_on_mongodb_concurrent_runs_with_one_artifact_register_one_version(
    infra, unique, mk, tmp_path
):
    client, db = connect_mongo(ServiceSettings(mongo_uri=infra.mongo_uri, mongo_db=f"d_{unique}"))
    try:
        repo = MongoRegistryRepository(db)
        await repo.init()
        published = RecordingPublisher()
        store = LocalObjectStore(tmp_path / "objects")
        service = RegistryService(
            repo, store, InlineRelay(repo.outboxes, published), clock=mk.clock()
        )
        ref = await mk.put_artifact(store, MODEL)
        events = [mk.trained(MODEL, ref) for _ in range(5)]
        outcomes = await asyncio.gather(*(service.register(e) for e in events))
        assert sum(o is not None for o in outcomes) == 1
        assert [v.artifact.sha256 for v in await service.list_versions(MODEL)] == [ref.sha256]
        assert len(published.of(ModelRegistered)) == 1
        actions = [r.action for r in await service.audit(MODEL, 100)]
        assert sorted(actions) == ["registered"] + ["registration_duplicate_artifact"] * 4
    finally:
        await client.close()
