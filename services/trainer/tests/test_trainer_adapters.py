"""One suite per port, run against the in-memory fake and the MongoDB adapter alike."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from trainer_fixtures import T0, drift_event, feedback_events

from modelbus_platform.settings import ServiceSettings
from modelbus_platform.stores import connect_mongo
from modelbus_trainer.adapters import (
    MongoFeedbackStore,
    MongoLockStore,
    MongoRunStore,
)
from modelbus_trainer.domain import new_run
from modelbus_trainer.testing import MemoryFeedbackStore, MemoryLockStore, MemoryRunStore


@pytest.fixture(params=["memory", pytest.param("mongo", marks=pytest.mark.integration)])
async def stores(request, unique):
    if request.param == "memory":
        yield MemoryFeedbackStore(), MemoryRunStore(), MemoryLockStore()
        return
    infra = request.getfixturevalue("infra")
    client, db = connect_mongo(ServiceSettings(mongo_uri=infra.mongo_uri, mongo_db=f"t_{unique}"))
    feedback, runs = MongoFeedbackStore(db), MongoRunStore(db)
    await feedback.init()
    await runs.init()
    yield feedback, runs, MongoLockStore(db)
    await client.close()


async def test_feedback_joins_in_any_order_and_filters(stores):
    feedback, _, _ = stores
    pairs = feedback_events("m", 6, T0)
    for prediction, label in pairs[:3]:
        await feedback.record_label(label)
        await feedback.record_prediction(prediction)
    for prediction, label in pairs[3:]:
        await feedback.record_prediction(prediction)
        await feedback.record_label(label)
    await feedback.record_prediction(feedback_events("m", 1, T0)[0][0])  # unlabelled
    await feedback.record_label(feedback_events("m", 1, T0)[0][1])  # label without prediction
    await feedback.record_prediction(feedback_events("other", 1, T0)[0][0])

    assert await feedback.count_complete("m") == 6
    assert await feedback.count_all("m") == 7  # predictions recorded; a lone label is not a row
    since = pairs[2][0].occurred_at
    assert await feedback.count_complete("m", since) == 4
    rows = await feedback.complete_rows("m", None, 4)
    assert [r["prediction_id"] for r in rows] == [p.prediction_id for p, _ in pairs[2:]]
    assert rows[0]["label"] == pairs[2][1].label
    assert rows[0]["features"] == pairs[2][0].features
    assert rows[0]["predicted_at"] == pairs[2][0].occurred_at
    # the drift window's "before detected_at" half: [since, until), newest first cut
    assert await feedback.count_complete("m", None, since) == 2
    before = await feedback.complete_rows("m", None, 1, until=since)
    assert [r["prediction_id"] for r in before] == [pairs[1][0].prediction_id]
    assert await feedback.complete_rows("m", None, 0) == []


async def test_runs_create_once_update_list_and_find_active(stores):
    _, runs, _ = stores
    drift = drift_event("m", T0)
    first = new_run(drift, default_seed=1, now=T0)
    assert await runs.create(first) is True
    assert await runs.create(first) is False
    skipped = new_run(drift_event("m", T0), default_seed=1, now=T0 + timedelta(seconds=5))
    skipped["state"] = "skipped"
    await runs.create(skipped)
    assert await runs.last_drift_run_created("m") == T0
    await runs.update(first["run_id"], {"state": "running", "metrics": {"auc": 0.9}})
    got = await runs.get(first["run_id"])
    assert got["state"] == "running" and got["metrics"] == {"auc": 0.9}
    assert got["created_at"] == T0  # times come back as aware datetimes
    assert [r["run_id"] for r in await runs.active("m")] == [first["run_id"]]
    assert await runs.active("other") == []
    listed = await runs.list("m", 10)
    assert [r["run_id"] for r in listed] == [skipped["run_id"], first["run_id"]]
    assert len(await runs.list("m", 1)) == 1
    assert await runs.get("nope") is None
    assert await runs.last_drift_run_created("other") is None


async def test_lock_is_exclusive_refreshable_and_stale_locks_are_taken_over(stores):
    _, _, locks = stores
    assert await locks.acquire("m", "r1", T0, 60) is True
    assert await locks.acquire("m", "r2", T0 + timedelta(seconds=30), 60) is False
    assert await locks.acquire("m", "r1", T0 + timedelta(seconds=50), 60) is True  # refresh
    assert await locks.acquire("m", "r2", T0 + timedelta(seconds=100), 60) is False
    assert await locks.acquire("m", "r2", T0 + timedelta(seconds=111), 60) is True  # stale
    await locks.release("m", "r1")  # not the holder: no effect
    holder = await locks.holder("m")
    assert holder["run_id"] == "r2" and holder["acquired_at"] == T0 + timedelta(seconds=111)
    await locks.release("m", "r2")
    assert await locks.holder("m") is None
    assert await locks.acquire("m", "r3", T0, 60) is True


def _claim(run_id: str, at=T0) -> dict:
    return {"run_id": run_id, "trigger_event_id": f"e-{run_id}", "correlation_id": "c", "at": at}


async def test_a_dedupe_key_is_claimed_once_even_concurrently(stores):
    _, runs, _ = stores
    won = await asyncio.gather(*(runs.insert_claim("k", _claim(f"r{i}")) for i in range(8)))
    assert sum(won) == 1
    holder = await runs.get_claim("k")
    assert holder == _claim(f"r{won.index(True)}")  # the time comes back as it went in
    assert await runs.get_claim("other") is None


async def test_a_claim_is_replaced_only_by_compare_and_set_and_released_by_its_holder(stores):
    _, runs, _ = stores
    assert await runs.insert_claim("k", _claim("r1"))
    later = T0 + timedelta(minutes=5)
    outcomes = await asyncio.gather(
        *(runs.replace_claim("k", "r1", _claim(f"t{i}", later)) for i in range(4))
    )
    assert sum(outcomes) == 1  # of four takers seeing r1, one wins
    taker = (await runs.get_claim("k"))["run_id"]
    assert not await runs.replace_claim("k", "r1", _claim("late", later))
    await runs.release_claim("k", "r1")  # not the holder: no effect
    assert (await runs.get_claim("k"))["run_id"] == taker
    await runs.release_claim("k", taker)
    assert await runs.get_claim("k") is None
    assert await runs.insert_claim("k", _claim("r2"))
