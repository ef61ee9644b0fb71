"""One contract suite for the DecisionStore port: the in-memory fake and MongoDB-wire alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from modelbus_deployer.adapters import MongoDecisionStore
from modelbus_deployer.testing import MemoryDecisionStore
from modelbus_platform.outbox import MongoOutbox, Relay
from modelbus_platform.settings import ServiceSettings
from modelbus_platform.stores import connect_mongo

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(
    params=["memory", pytest.param("mongo", marks=pytest.mark.integration)],
)
async def store(request, unique):
    if request.param == "memory":
        store = MemoryDecisionStore()
    else:
        infra = request.getfixturevalue("infra")
        _, db = connect_mongo(ServiceSettings(mongo_uri=infra.mongo_uri, mongo_db=f"dd_{unique}"))
        store = MongoDecisionStore(db)
    await store.init()
    return store


def doc(model: str, version: int, minutes: int = 0) -> dict:
    return {
        "model_name": model,
        "version": version,
        "decision": "promote",
        "reasons": [f"v{version}"],
        "decided_at": T0 + timedelta(minutes=minutes),
    }


async def test_one_decision_per_model_version(store):
    assert await store.insert(doc("a", 1))
    assert not await store.insert({**doc("a", 1), "reasons": ["second"]})
    assert await store.insert(doc("b", 1))

    got = await store.get("a", 1)
    assert got is not None and got["reasons"] == ["v1"]
    assert "_id" not in got
    assert await store.get("a", 2) is None


async def test_a_decision_is_published_once_its_events_left_the_outbox(store, world):
    evaluated = await world.registered(world.models.good)
    assert await store.insert(doc("a", 1), events=[evaluated])
    assert (await store.get("a", 1))["published"] is False
    relay = Relay(
        [store.outbox if hasattr(store, "outbox") else MongoOutbox(store.col)], world.publisher
    )
    assert await relay.drain() == 1
    assert (await store.get("a", 1))["published"] is True
    assert world.publisher.events == [evaluated]


async def test_list_is_newest_first_filtered_and_limited(store):
    for version, minutes in [(1, 0), (2, 5), (3, 10)]:
        await store.insert(doc("a", version, minutes))
    await store.insert(doc("b", 1, 20))

    assert [d["version"] for d in await store.list("a", 10)] == [3, 2, 1]
    assert [(d["model_name"], d["version"]) for d in await store.list(None, 2)] == [
        ("b", 1),
        ("a", 3),
    ]


async def test_a_decision_stored_while_the_broker_is_down_is_published_later(
    store, world, flaky_publisher
):
    world.decisions = store
    event = await world.registered(world.models.good)
    flaky = flaky_publisher(failures=1)
    outbox = store.outbox

    assert await world.service(flaky).handle_registered(event) == "decided"  # no error
    assert (await store.get("churn", 1))["published"] is False
    assert flaky.events == []
    assert await world.service(flaky).handle_registered(event) == "duplicate"
    assert await Relay([outbox], flaky).drain() == 1  # the relay's next attempt

    [evaluated] = flaky.events
    stored = await store.get("churn", 1)
    assert stored["published"] is True
    assert stored["event_id"] == str(evaluated.event_id)
    assert evaluated.decision == stored["decision"] == "promote"
    assert evaluated.challenger_metrics == stored["challenger_metrics"]


async def test_transition_is_a_compare_and_set_on_the_stage(store):
    await store.insert({**doc("a", 1), "stage": 0, "live": "canary"})

    moved = await store.transition("a", 1, 0, {"stage": 1, "live": "watch", "decision": "x"})
    stale = await store.transition("a", 1, 0, {"stage": 1, "live": "none"})

    assert moved is not None and moved["live"] == "watch" and moved["stage"] == 1
    assert stale is None
    assert (await store.get("a", 1))["live"] == "watch"
    assert await store.transition("a", 9, 0, {"stage": 1}) is None


async def test_active_is_the_newest_live_decision(store):
    await store.insert({**doc("a", 1), "stage": 2, "live": "watch"})
    await store.insert({**doc("a", 2), "stage": 0, "live": "canary"})
    await store.insert({**doc("a", 3), "stage": 0, "live": "none"})
    await store.insert(doc("b", 1))

    active = await store.active("a")

    assert active is not None and (active["version"], active["live"]) == (2, "canary")
    assert await store.active("b") is None
    await store.transition("a", 2, 0, {"stage": 1, "live": "none"})
    assert (await store.active("a"))["version"] == 1
