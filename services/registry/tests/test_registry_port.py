"""One port, one suite: the registry repository contract, run against the in-memory fake and
the MongoDB adapter (on the session's real nx-27017 server)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from modelbus_platform.settings import ServiceSettings
from modelbus_platform.stores import connect_mongo
from modelbus_registry.adapters import MongoRegistryRepository
from modelbus_registry.testing import MemoryRegistryRepository

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(
    params=["memory", pytest.param("mongo", marks=pytest.mark.integration)],
)
async def repo(request, unique):
    if request.param == "memory":
        yield MemoryRegistryRepository()
        return
    infra = request.getfixturevalue("infra")
    client, db = connect_mongo(ServiceSettings(mongo_uri=infra.mongo_uri, mongo_db=f"reg_{unique}"))
    repository = MongoRegistryRepository(db)
    await repository.init()
    yield repository
    await client.close()


def version(model: str, number: int, run_id: str) -> dict:
    return {
        "model_name": model,
        "version": number,
        "run_id": run_id,
        "status": "registered",
        "created_at": NOW,
        "metrics": {"auc": 0.5 + number / 100},
        "evaluation": None,
    }


async def test_versions_are_allocated_in_order_and_create_the_model(repo, unique):
    model = f"m-{unique}"
    assert await repo.get_model(model) is None
    assert [await repo.allocate_version(model, NOW) for _ in range(3)] == [1, 2, 3]
    doc = await repo.get_model(model)
    assert doc["latest_version"] == 3
    assert doc["aliases"] == {"champion": None, "challenger": None, "previous": None}
    assert doc["alias_revision"] == 0
    assert doc["created_at"] == NOW


async def test_concurrent_allocations_never_share_a_number(repo, unique):
    model = f"m-{unique}"
    numbers = await asyncio.gather(*(repo.allocate_version(model, NOW) for _ in range(10)))
    assert sorted(numbers) == list(range(1, 11))


async def test_versions_are_unique_per_number_and_per_run(repo, unique):
    model = f"m-{unique}"
    assert await repo.insert_version(version(model, 1, "run-a"))
    assert not await repo.insert_version(version(model, 1, "run-b"))
    assert not await repo.insert_version(version(model, 2, "run-a"))
    assert await repo.insert_version(version(f"other-{unique}", 1, "run-a"))
    assert (await repo.find_version_by_run(model, "run-a"))["version"] == 1
    assert await repo.find_version_by_run(model, "run-b") is None
    assert await repo.count_versions(model) == 1


def with_artifact(doc: dict, sha: str) -> dict:
    return {**doc, "artifact": {"sha256": sha}, "artifact_sha256": sha}


async def test_one_version_per_artifact_and_versions_found_by_it(repo, unique):
    model, sha = f"m-{unique}", "a" * 64
    assert await repo.insert_version(with_artifact(version(model, 1, "run-a"), sha))
    assert not await repo.insert_version(with_artifact(version(model, 2, "run-b"), sha))
    assert await repo.insert_version(with_artifact(version(model, 2, "run-c"), "b" * 64))
    assert await repo.insert_version(with_artifact(version(f"other-{unique}", 1, "run-b"), sha))
    # versions stored before artifacts were unique have no artifact_sha256: never refused
    assert await repo.insert_version({**version(model, 3, "run-d"), "artifact": {"sha256": sha}})
    assert await repo.insert_version(version(model, 4, "run-e"))
    assert await repo.insert_version(version(model, 5, "run-f"))
    assert (await repo.find_version_by_artifact(model, sha))["version"] == 1  # the oldest
    assert (await repo.find_version_by_artifact(model, "b" * 64))["run_id"] == "run-c"
    assert await repo.find_version_by_artifact(model, "c" * 64) is None


async def test_concurrent_inserts_of_one_artifact_have_one_winner(repo, unique):
    model, sha = f"m-{unique}", "d" * 64
    inserted = await asyncio.gather(
        *(
            repo.insert_version(with_artifact(version(model, n, f"run-{n}"), sha))
            for n in range(1, 7)
        )
    )
    assert sum(inserted) == 1
    assert await repo.count_versions(model) == 1


async def test_the_sweep_moves_a_registered_version_by_compare_and_set(repo, unique):
    model = f"m-{unique}"
    for n in (2, 1, 3):
        await repo.insert_version({**version(model, n, f"run-{n}"), "reannounced": 0})
    await repo.update_version(model, 3, {"status": "rejected"})
    registered = [
        (v["model_name"], v["version"])
        for v in await repo.versions_in_status("registered", 1000)
        if v["model_name"] == model
    ]
    assert registered == [(model, 1), (model, 2)]
    # of four concurrent sweeps one moves it
    moved = await asyncio.gather(
        *(
            repo.sweep_version(model, 1, 0, {"reannounced": 1, "announced_at": "t"})
            for _ in range(4)
        )
    )
    assert sum(moved) == 1
    assert not await repo.sweep_version(model, 1, 0, {"reannounced": 1})  # count moved on
    assert await repo.sweep_version(model, 1, 1, {"reannounced": 2})
    assert not await repo.sweep_version(model, 3, 0, {"status": "stale"})  # not registered
    assert await repo.sweep_version(model, 2, 0, {"status": "stale"})
    assert not await repo.sweep_version(model, 2, 0, {"status": "stale"})
    assert (await repo.get_version(model, 1))["reannounced"] == 2
    assert (await repo.get_version(model, 2))["status"] == "stale"
    assert (await repo.get_version(model, 3))["status"] == "rejected"


@pytest.mark.integration
async def test_init_gives_versions_stored_before_the_sweep_its_count(infra, unique):
    client, db = connect_mongo(ServiceSettings(mongo_uri=infra.mongo_uri, mongo_db=f"o_{unique}"))
    try:
        await db["versions"].insert_one(version("old", 1, "run-1"))  # no count: an old version
        repo = MongoRegistryRepository(db)
        assert not await repo.sweep_version("old", 1, 0, {"status": "stale"})
        await repo.init()
        assert await repo.sweep_version("old", 1, 0, {"status": "stale"})
    finally:
        await client.close()


async def test_versions_list_oldest_first_and_update(repo, unique):
    model = f"m-{unique}"
    for n in (3, 1, 2):
        await repo.insert_version(version(model, n, f"run-{n}"))
    assert [v["version"] for v in await repo.list_versions(model)] == [1, 2, 3]
    await repo.update_version(model, 2, {"status": "rejected", "evaluation": {"decision": "x"}})
    doc = await repo.get_version(model, 2)
    assert doc["status"] == "rejected"
    assert doc["evaluation"] == {"decision": "x"}
    assert "_id" not in doc
    assert await repo.get_version(model, 9) is None


async def test_alias_compare_and_set(repo, unique):
    model = f"m-{unique}"
    await repo.allocate_version(model, NOW)
    moved = await repo.cas_aliases(model, {"champion": None}, {"champion": 1}, NOW)
    assert moved["aliases"]["champion"] == 1
    assert moved["alias_revision"] == 1
    # stale expectation: nothing changes
    assert await repo.cas_aliases(model, {"champion": None}, {"champion": 2}, NOW) is None
    both = {"champion": 1, "previous": None}
    moved = await repo.cas_aliases(model, both, {"champion": 2, "previous": 1}, NOW)
    assert moved["aliases"] == {"champion": 2, "challenger": None, "previous": 1}
    assert (await repo.get_model(model))["alias_revision"] == 2
    assert (
        await repo.cas_aliases(f"nope-{unique}", {"champion": None}, {"champion": 1}, NOW) is None
    )


async def test_concurrent_compare_and_set_has_one_winner(repo, unique):
    model = f"m-{unique}"
    await repo.allocate_version(model, NOW)
    results = await asyncio.gather(
        *(repo.cas_aliases(model, {"champion": None}, {"champion": n}, NOW) for n in range(1, 6))
    )
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert (await repo.get_model(model))["aliases"]["champion"] == winners[0]["aliases"]["champion"]


async def test_audit_is_append_only_newest_first(repo, unique):
    model, other = f"m-{unique}", f"o-{unique}"
    seqs = []
    for i, name in enumerate([model, other, model, model]):
        seqs.append(await repo.append_audit({"at": NOW, "model_name": name, "action": f"a{i}"}))
    assert seqs == sorted(seqs) and len(set(seqs)) == 4
    rows = await repo.list_audit(model, 10)
    assert [r["action"] for r in rows] == ["a3", "a2", "a0"]
    assert [r["action"] for r in await repo.list_audit(model, 2)] == ["a3", "a2"]
    everything = [r["action"] for r in await repo.list_audit(None, 100)]
    assert everything.index("a3") < everything.index("a1") < everything.index("a0")


async def test_models_are_listed_by_name(repo, unique):
    for name in (f"b-{unique}", f"a-{unique}"):
        await repo.allocate_version(name, NOW)
    names = [m["name"] for m in await repo.list_models()]
    assert names.index(f"a-{unique}") < names.index(f"b-{unique}")
    assert await repo.ping()


async def test_rollout_state_is_stored_on_the_model(repo):
    await repo.allocate_version("r", NOW)
    rollout = {"mode": "canary", "version": 2, "champion_version": 1, "fraction": 0.5, "step": 1}

    await repo.set_rollout("r", rollout, NOW)
    await repo.set_rollout("missing", rollout, NOW)  # no model: nothing happens

    model = await repo.get_model("r")
    assert model["rollout"] == rollout
    assert await repo.get_model("missing") is None


async def test_policy_revisions_are_unique_and_listed_newest_first(repo, unique):
    model = f"p-{unique}"
    assert await repo.latest_policy(model) is None
    for revision in (1, 2):
        doc = {"model_name": model, "revision": revision, "policy": {"training": {}}, "at": NOW}
        assert await repo.insert_policy(doc)
    assert not await repo.insert_policy({"model_name": model, "revision": 2, "policy": {}})
    assert (await repo.latest_policy(model))["revision"] == 2
    assert [p["revision"] for p in await repo.list_policies(model, 10)] == [2, 1]
    assert [p["revision"] for p in await repo.list_policies(model, 1)] == [2]
    assert await repo.latest_policy(f"other-{unique}") is None
    await repo.insert_policy({"model_name": f"a-{unique}", "revision": 1, "policy": {}})
    mine = [p for p in await repo.latest_policies() if p["model_name"] in (model, f"a-{unique}")]
    assert [(p["model_name"], p["revision"]) for p in mine] == [(f"a-{unique}", 1), (model, 2)]


async def test_every_model_name_is_listed_as_the_string_it_is(repo, unique):
    """Names a store might read as numbers or literals (the fuzzer's "0" made GET /policies a
    500: nx-27017's distinct answered 0 and dropped "true")."""
    names = ["0", "1e3", "true", "null", "-3", f"n-{unique}"]
    for name in names:
        assert await repo.insert_policy({"model_name": name, "revision": 1, "policy": {}})
    listed = [p["model_name"] for p in await repo.latest_policies()]
    assert [n for n in listed if n in names] == sorted(names)
