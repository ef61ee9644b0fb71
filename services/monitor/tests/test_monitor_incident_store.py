"""One test suite for the IncidentStore port, run against the in-memory fake and MongoDB."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from modelbus_monitor.adapters import MongoIncidentStore
from modelbus_monitor.policy import Incident
from modelbus_monitor.testing import MemoryIncidentStore
from modelbus_platform.settings import ServiceSettings
from modelbus_platform.stores import connect_mongo

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(params=["memory", pytest.param("mongo", marks=pytest.mark.integration)])
async def store(request, unique):
    if request.param == "memory":
        yield MemoryIncidentStore()
        return
    infra = request.getfixturevalue("infra")
    client, db = connect_mongo(ServiceSettings(mongo_uri=infra.mongo_uri, mongo_db=f"st_{unique}"))
    mongo = MongoIncidentStore(db)
    await mongo.init()
    yield mongo
    await client.close()


def incident(incident_id: str, model: str, minutes: int) -> Incident:
    return Incident(
        incident_id=incident_id,
        model_name=model,
        version=1,
        opened_at=T0 + timedelta(minutes=minutes),
        causation_id="cause",
        evidence={"feature": "__error__", "statistic": 0.4},
        event={"incident_id": incident_id},
    )


async def test_save_is_an_upsert_and_get_round_trips(store):
    first = incident("i1", "a", 0)
    await store.save(first)
    first.suppressed_alarms = 3
    first.close(T0 + timedelta(hours=1), 2, "evt", "promoted")
    await store.save(first)
    got = await store.get("i1")
    assert got == first
    assert await store.get("missing") is None


async def test_list_newest_first_by_model_with_limit_and_open_only(store):
    for i, model in enumerate(["a", "b", "a", "a"]):
        await store.save(incident(f"i{i}", model, i))
    closed = incident("i0", "a", 0)
    closed.close(T0, 2, None, "promoted")
    await store.save(closed)
    assert [i.incident_id for i in await store.list("a", 10)] == ["i3", "i2", "i0"]
    assert [i.incident_id for i in await store.list("a", 2)] == ["i3", "i2"]
    assert [i.incident_id for i in await store.list(None, 10)] == ["i3", "i2", "i1", "i0"]
    assert sorted(i.incident_id for i in await store.open_incidents()) == ["i1", "i2", "i3"]
    assert await store.ping()
