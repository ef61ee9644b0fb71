"""Detector checkpoints and daily windows: one port suite for the fakes and MongoDB, and a
restart on the real MongoDB-wire server (checkpoint, re-trigger state and daily windows survive)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from modelbus_contracts import DriftDetected
from modelbus_monitor.adapters import (
    JOIN_CHUNK_ROWS,
    MongoDailyStore,
    MongoIncidentStore,
    MongoStateStore,
)
from modelbus_monitor.config import DetectorConfig
from modelbus_monitor.testing import MemoryDailyStore, MemoryIncidentStore, MemoryStateStore
from modelbus_platform.settings import ServiceSettings
from modelbus_platform.stores import connect_mongo
from modelbus_platform.testing import InlineRelay

from .test_monitor_report import REFERENCE, feed
from .test_monitor_service import Harness, version_view

T0 = datetime(2026, 3, 1, 8, tzinfo=UTC)


@pytest.fixture(params=["memory", pytest.param("mongo", marks=pytest.mark.integration)])
async def stores(request, unique):
    if request.param == "memory":
        yield MemoryStateStore(), MemoryDailyStore(), MemoryIncidentStore()
        return
    infra = request.getfixturevalue("infra")
    client, db = connect_mongo(ServiceSettings(mongo_uri=infra.mongo_uri, mongo_db=f"ms_{unique}"))
    states, daily, incidents = MongoStateStore(db), MongoDailyStore(db), MongoIncidentStore(db)
    for store in (states, daily, incidents):
        await store.init()
    yield states, daily, incidents
    await client.close()


async def test_state_store_replaces_per_model(stores):
    states, _, _ = stores
    assert await states.load("m") is None
    await states.save({"_id": "m", "serving_version": 1, "streams": [{"recent": [0.5] * 2000}]})
    await states.save({"_id": "m", "serving_version": 2, "streams": []})
    loaded = await states.load("m")
    assert (loaded["serving_version"], loaded["streams"]) == (2, [])


async def test_join_buffers_larger_than_a_document_round_trip_in_chunks(stores):
    """100k pending predictions are ~11 MB of JSON: stored in chunks under a generation; the
    checkpoint that names it loads them all, in order; older generations are gone."""
    states, _, _ = stores
    n = JOIN_CHUNK_ROWS * 2 + 5
    join = {
        "predictions": {
            "prediction_id": [f"p{i}" for i in range(n)],
            "version": [1] * n,
            "served_by": ["champion"] * n,
            "label": [i % 2 for i in range(n)],
            "event_id": [f"e{i}" for i in range(n)],
            "at": [float(i) for i in range(n)],
        },
        "labels": {"prediction_id": ["q"], "label": [1], "event_id": ["f"], "at": [1.0]},
        "joined": [f"j{i}" for i in range(3)],
    }
    await states.save({"_id": "m", "serving_version": 1, "streams": [], "join": join})
    await states.save({"_id": "m", "serving_version": 1, "streams": [], "join": join})
    loaded = await states.load("m")
    assert loaded["join"] == join
    if isinstance(states, MongoStateStore):
        assert await states.join.count_documents({"model_name": "m"}) == 5  # 3 + 1 + 1 chunks


async def test_daily_store_keys_by_model_day_feature(stores):
    _, daily, _ = stores
    doc = {"model_name": "m", "day": "2026-03-01", "feature": "x", "count": 3, "sample": [0.1]}
    await daily.save([{"_id": "m|2026-03-01|x", **doc}])
    await daily.save([{"_id": "m|2026-03-01|x", **doc, "count": 5}])
    await daily.save([{"_id": "m|2026-03-02|x", **doc, "day": "2026-03-02"}])
    [found] = await daily.day("m", "2026-03-01")
    assert found["count"] == 5 and found["sample"] == [0.1]
    assert await daily.day("other", "2026-03-01") == []


async def test_restart_keeps_windows_incident_attempts_and_daily_counts(stores):
    states, daily, incidents = stores

    def service(h: Harness):
        built = h.build(DetectorConfig(retrigger_s=120, feature_min_observations=100))
        built.states, built.daily, built.incidents = states, daily, incidents
        built.events = InlineRelay([incidents.outbox], h.publisher)
        return built

    h = Harness()
    h.registry.put(version_view("churn", 1, reference=REFERENCE), champion=True)
    h.clock.now = T0
    h.service = service(h)
    await h.service.rebuild()
    await feed(h, 1500)
    await feed(h, 600, x_mean=1.5)
    [first] = h.publisher.of(DriftDetected)
    h.clock.now += timedelta(seconds=121)
    await h.service.tick()  # re-emits (attempt 2), checkpoints, stores the daily windows
    assert [e.attempt for e in h.publisher.of(DriftDetected)] == [1, 2]
    before = h.service.status("churn")["detectors"]

    h.service = service(h)  # restart
    await h.service.rebuild()
    after = h.service.status("churn")
    assert after["open_incident"]["incident_id"] == first.incident_id
    assert after["open_incident"]["attempts"] == 2
    for key in ("x", "x:scale", "y"):
        assert after["detectors"][key]["observations"] == before[key]["observations"]
    h.clock.now += timedelta(seconds=121)
    await feed(h, 50, x_mean=1.5)
    assert [e.attempt for e in h.publisher.of(DriftDetected)] == [1, 2, 3]
    report = await h.service.daily_report("churn")
    assert report["features"]["x"]["count"] == 2150
    assert report["features"]["x"]["psi_vs_reference"] > 0.1
