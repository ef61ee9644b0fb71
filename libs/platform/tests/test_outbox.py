"""The outbox: events written with the state change, published in order by one relay, retried
until the broker answers; the same suite on the in-memory store and on MongoDB (nx-27017)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from modelbus_contracts import KafkaRecord, LabelObserved, decode
from modelbus_platform.outbox import MongoOutbox, Relay, outbox_doc, outbox_set
from modelbus_platform.stores import connect_mongo
from modelbus_platform.testing import InlineRelay, MemoryOutbox


class Broker:
    """A publisher that can be down; keeps what it took, in order."""

    def __init__(self) -> None:
        self.records: list[KafkaRecord] = []
        self.down = False
        self.attempts = 0

    async def publish_record(self, record: KafkaRecord) -> None:
        self.attempts += 1
        if self.down:
            raise ConnectionError("broker unreachable")
        self.records.append(record)

    def ids(self) -> list[str]:
        return [str(decode(r.headers, r.value).event_id) for r in self.records]


def labels(n: int, model: str = "m") -> list[LabelObserved]:
    return [LabelObserved(model_name=model, prediction_id=f"p{i}", label=i % 2) for i in range(n)]


# -- in memory ---------------------------------------------------------------------------------


async def test_inline_relay_publishes_what_was_written_in_order():
    outbox, broker = MemoryOutbox(), Broker()
    relay = InlineRelay([outbox], broker)
    events = labels(3)
    outbox.add(events)
    await relay.notify()
    assert broker.ids() == [str(e.event_id) for e in events]
    assert await outbox.pending(10) == []


async def test_a_failed_publish_keeps_the_rest_pending_and_a_later_drain_sends_it():
    outbox, broker = MemoryOutbox(), Broker()
    relay = Relay([outbox], broker)
    outbox.add(labels(2))
    broker.down = True
    with pytest.raises(ConnectionError):
        await relay.drain()
    assert len(await outbox.pending(10)) == 2
    broker.down = False
    assert await relay.drain() == 2
    assert len(broker.records) == 2 and await outbox.pending(10) == []


async def test_the_relay_retries_with_backoff_until_the_broker_answers():
    outbox, broker = MemoryOutbox(), Broker()
    relay = Relay([outbox], broker, poll_s=30, backoff_s=0.01, max_backoff_s=0.05)
    broker.down = True
    outbox.add(labels(1))
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.sleep(0.2)
        assert broker.attempts >= 3 and not broker.records  # retried, bounded by the cap
        broker.down = False
        for _ in range(100):
            if broker.records:
                break
            await asyncio.sleep(0.01)
        assert len(broker.records) == 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_notify_wakes_the_relay_at_once():
    outbox, broker = MemoryOutbox(), Broker()
    relay = Relay([outbox], broker, poll_s=60)
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.sleep(0.05)
        outbox.add(labels(1))
        await relay.notify()
        for _ in range(100):
            if broker.records:
                break
            await asyncio.sleep(0.01)
        assert len(broker.records) == 1  # long before the 60 s poll
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_records_of_several_stores_go_out_in_the_order_they_were_written():
    a, b, broker = MemoryOutbox(), MemoryOutbox(), Broker()
    first, second, third = labels(3)
    a.add([first])
    b.add([second])
    a.add([third])
    await Relay([a, b], broker).drain()
    assert broker.ids() == [str(e.event_id) for e in (first, second, third)]


# -- MongoDB -----------------------------------------------------------------------------------


@pytest.fixture
async def collection(infra, service_env):
    from modelbus_platform.settings import ServiceSettings

    settings = ServiceSettings(
        mongo_uri=service_env["MODELBUS_MONGO_URI"], mongo_db=service_env["MODELBUS_MONGO_DB"]
    )
    client, db = connect_mongo(settings)
    try:
        yield db[f"things_{uuid.uuid4().hex[:6]}"]
    finally:
        await client.close()


@pytest.mark.integration
async def test_mongo_outbox_publishes_events_written_with_inserts_and_updates(collection):
    outbox, broker = MongoOutbox(collection), Broker()
    await outbox.init()
    e1, e2, e3 = labels(3)
    await collection.insert_one({"_id": "a", "state": 1, **outbox_doc([e1])})
    await collection.update_one({"_id": "a"}, {"$set": {"state": 2, **outbox_set([e2])}})
    await collection.insert_one({"_id": "b", "state": 1, **outbox_doc([e3])})
    relay = Relay([outbox], broker)
    assert await relay.drain() == 3
    assert broker.ids() == [str(e.event_id) for e in (e1, e2, e3)]
    assert await outbox.pending(10) == []
    doc = await collection.find_one({"_id": "a"})
    assert doc["state"] == 2 and not doc.get("outbox") and "outbox_seq" not in doc
    assert await relay.drain() == 0  # nothing published twice


@pytest.mark.integration
async def test_mongo_outbox_keeps_events_while_the_broker_is_down(collection):
    outbox, broker = MongoOutbox(collection), Broker()
    await outbox.init()
    events = labels(2)
    await collection.insert_one({"_id": "a", **outbox_doc(events)})
    broker.down = True
    with pytest.raises(ConnectionError):
        await Relay([outbox], broker).drain()
    assert len(await outbox.pending(10)) == 2
    broker.down = False
    assert await Relay([outbox], broker).drain() == 2  # a new relay (a restart) finds them
    assert broker.ids() == [str(e.event_id) for e in events]


@pytest.mark.integration
async def test_an_event_written_while_a_drain_publishes_is_not_lost(collection):
    outbox = MongoOutbox(collection)
    await outbox.init()
    late = labels(2)[1]

    class SlowBroker(Broker):
        async def publish_record(self, record: KafkaRecord) -> None:
            await super().publish_record(record)
            if len(self.records) == 1:  # a write lands between the read and the clean-up
                await collection.update_one({"_id": "a"}, {"$set": outbox_set([late])})

    broker = SlowBroker()
    await collection.insert_one({"_id": "a", **outbox_doc(labels(1))})
    relay = Relay([outbox], broker)
    await relay.drain()
    await relay.drain()
    assert str(late.event_id) in broker.ids()
    assert await outbox.pending(10) == []
