"""The event bus against a real Kafka-protocol broker and a real MongoDB-wire server."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer

from modelbus_contracts import (
    LabelObserved,
    ModelRollbackRequested,
    PredictionMade,
    decode,
    encode,
)
from modelbus_platform.bus import EventBus, dlq_topic
from modelbus_platform.metrics import Metrics
from modelbus_platform.settings import ServiceSettings
from modelbus_platform.signing import Signer, Verifier, keypair, private_key, public_key
from modelbus_platform.stores import MongoProcessedEvents, connect_mongo

pytestmark = pytest.mark.integration


async def _bus(infra, db_name: str, service: str = "test") -> EventBus:
    settings = ServiceSettings(mongo_uri=infra.mongo_uri, mongo_db=db_name)
    _, db = connect_mongo(settings)
    processed = MongoProcessedEvents(db)
    await processed.init()
    return EventBus(
        infra.kafka_bootstrap,
        service=service,
        metrics=Metrics(service),
        processed=processed,
        retries=2,
        backoff_s=0.01,
    )


async def _read_dlq(bootstrap: str, topic: str, key: str, n: int, timeout: float = 20.0) -> list:
    consumer = AIOKafkaConsumer(
        dlq_topic(topic),
        bootstrap_servers=bootstrap,
        group_id=f"dlq-reader-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    out = []
    try:
        async with asyncio.timeout(timeout):
            while len(out) < n:
                message = await consumer.getone()
                if message.key == key.encode():
                    out.append(message)
    finally:
        await consumer.stop()
    return out


async def test_duplicates_are_skipped_and_poison_goes_to_dlq(infra, unique):
    model = f"m-{unique}"
    handled: list[LabelObserved] = []
    failing_ids: set[str] = set()
    done = asyncio.Event()

    async def handler(event: LabelObserved) -> None:
        if event.prediction_id in failing_ids:
            raise RuntimeError("boom")
        handled.append(event)
        if event.prediction_id == "last":
            done.set()

    bus = await _bus(infra, f"db_{unique}")
    bus.subscribe(LabelObserved, group=f"g-{unique}", handler=handler)
    await bus.start()
    try:
        first = LabelObserved(model_name=model, prediction_id="p1", label=1)
        await bus.publish(first)
        await bus.publish(first)  # a duplicate delivery: same event_id
        # malformed: valid headers, bad body -> DLQ with a contract reason
        bad = encode(LabelObserved(model_name=model, prediction_id="p2", label=0))
        body = b'{"prediction_id": "p2", "label": [7]}'
        await bus.broker.publish(body, bad.topic, key=bad.key, headers=bad.headers)
        failing_ids.add("p3")
        await bus.publish(LabelObserved(model_name=model, prediction_id="p3", label=0))
        await bus.publish(
            LabelObserved(producer="test", model_name=model, prediction_id="last", label=0)
        )
        await asyncio.wait_for(done.wait(), 30)
        lag = await bus.sample_lag()
        dlq = await _read_dlq(infra.kafka_bootstrap, LabelObserved.topic, model, 2)
    finally:
        await bus.stop()

    assert (LabelObserved.topic, f"g-{unique}") in lag
    assert 'modelbus_consumer_lag{group="g-' in _metrics_text(bus)
    ours = [e for e in handled if e.model_name == model]
    assert [e.prediction_id for e in ours] == ["p1", "last"]
    reasons = sorted(dict(m.headers)["x-dlq-reason"].decode() for m in dlq)
    assert reasons[0].startswith("contract: invalid event")
    assert "label" in reasons[0]
    assert reasons[1].startswith("handler: RuntimeError: boom")
    attempts = {dict(m.headers)["x-dlq-attempts"].decode() for m in dlq}
    assert attempts == {"0", "3"}


async def test_one_group_dispatches_several_event_types(infra, unique):
    from modelbus_contracts import ScoringRequested

    model = f"m-{unique}"
    got: dict[str, asyncio.Event] = {"label": asyncio.Event(), "score": asyncio.Event()}

    async def on_label(event: LabelObserved) -> None:
        if event.model_name == model:
            got["label"].set()

    async def on_score(event: ScoringRequested) -> None:
        if event.model_name == model:
            got["score"].set()

    bus = await _bus(infra, f"db2_{unique}")
    bus.subscribe(LabelObserved, group=f"multi-{unique}", handler=on_label)
    bus.subscribe(ScoringRequested, group=f"multi-{unique}", handler=on_score)
    with pytest.raises(ValueError, match="already handles"):
        bus.subscribe(LabelObserved, group=f"multi-{unique}", handler=on_label)
    await bus.start()
    try:
        await bus.publish(LabelObserved(model_name=model, prediction_id="p", label=1))
        await bus.publish(ScoringRequested(model_name=model, request_id="r", features={"a": 1.0}))
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in got.values())), 30)
    finally:
        await bus.stop()
    assert all(e.is_set() for e in got.values())


def _metrics_text(bus: EventBus) -> str:
    from prometheus_client import generate_latest

    return generate_latest(bus.metrics.registry).decode()


async def test_batch_subscription_gets_events_in_batches_and_dead_letters_bad_ones(infra, unique):

    model = f"b-{unique}"
    seen: list[str] = []
    batches: list[int] = []
    done = asyncio.Event()

    async def on_labels(events: list[LabelObserved]) -> None:
        ours = [e.prediction_id for e in events if e.model_name == model]
        if ours:
            batches.append(len(ours))
        seen.extend(ours)
        if "p199" in ours:
            done.set()

    async def on_predictions(events: list[PredictionMade]) -> None:
        return None

    bus = await _bus(infra, f"db3_{unique}")
    bus.subscribe_batch(LabelObserved, group=f"batch-{unique}", handler=on_labels)
    bus.subscribe_batch(PredictionMade, group=f"batch-{unique}", handler=on_predictions)
    with pytest.raises(ValueError, match="batch subscriptions"):
        bus.subscribe(LabelObserved, group=f"batch-{unique}", handler=on_labels)
    await bus.start()
    try:
        good = encode(LabelObserved(model_name=model, prediction_id="x", label=1))
        await bus.broker.publish(b"{broken", good.topic, key=good.key, headers=good.headers)
        for i in range(200):
            await bus.publish(LabelObserved(model_name=model, prediction_id=f"p{i}", label=i % 2))
        await asyncio.wait_for(done.wait(), 30)
        dlq = await _read_dlq(infra.kafka_bootstrap, LabelObserved.topic, model, 1)
    finally:
        await bus.stop()
    assert seen == [f"p{i}" for i in range(200)]
    assert max(batches) > 1, "events were not batched"
    assert "not valid JSON" in dict(dlq[0].headers)["x-dlq-reason"].decode()


async def test_pre_encoded_records_reach_consumers_in_order_on_the_keys_partition(infra, unique):
    """``publish_records`` packs records into batches per partition: a consumer decodes them
    as events, in order, on the partition ``publish`` picks for the same key."""
    from modelbus_contracts.records import encode_batch

    model = f"r-{unique}"
    bus = await _bus(infra, f"db4_{unique}")
    await bus.start()
    records = encode_batch(  # several record batches' worth
        LabelObserved,
        producer="test",
        shared={"model_name": model},
        rows={
            "prediction_id": [f"p{i}" for i in range(3000)],
            "label": [i % 2 for i in range(3000)],
        },
    )
    consumer = AIOKafkaConsumer(
        LabelObserved.topic,
        bootstrap_servers=infra.kafka_bootstrap,
        group_id=f"records-{unique}",
        auto_offset_reset="earliest",
    )
    try:
        await bus.publish_records(LabelObserved.topic, records)
        await bus.publish(
            LabelObserved(producer="test", model_name=model, prediction_id="last", label=0)
        )
        await consumer.start()
        got: list[tuple[int, LabelObserved]] = []
        async with asyncio.timeout(30):
            while not got or got[-1][1].prediction_id != "last":
                message = await consumer.getone()
                if message.key == model.encode():
                    got.append((message.partition, decode(message.headers, message.value)))
    finally:
        await consumer.stop()
        await bus.stop()
    assert [e.prediction_id for _, e in got] == [f"p{i}" for i in range(3000)] + ["last"]
    assert len({partition for partition, _ in got}) == 1  # the key's partition, as publish's
    assert {e.producer for _, e in got} == {"test"}
    assert "modelbus_events_published_total" in _metrics_text(bus)


async def test_the_bus_acts_only_on_control_events_its_services_signed(infra, unique):
    model = f"m-{unique}"
    private, public = keypair()
    deployer = Signer("deployer", private_key(private))
    verifier = Verifier({"deployer": public_key(public)})
    handled: list[ModelRollbackRequested] = []
    done = asyncio.Event()

    async def handler(event: ModelRollbackRequested) -> None:
        handled.append(event)
        done.set()

    consumer = await _bus(infra, f"db_{unique}", service="registry")
    consumer.verifier = verifier
    consumer.subscribe(ModelRollbackRequested, group=f"g-{unique}", handler=handler)
    producer = await _bus(infra, f"db_{unique}", service="deployer")
    producer.signer = deployer
    forger = await _bus(infra, f"db_{unique}", service="attacker")
    await consumer.start()
    await producer.start()
    await forger.start()
    try:
        await forger.publish(
            ModelRollbackRequested(model_name=model, from_version=3, reason="forged")
        )
        await producer.publish(
            ModelRollbackRequested(model_name=model, from_version=3, reason="p99 regressed")
        )
        await asyncio.wait_for(done.wait(), 30)
        dlq = await _read_dlq(infra.kafka_bootstrap, ModelRollbackRequested.topic, model, 1)
    finally:
        await forger.stop()
        await producer.stop()
        await consumer.stop()
    assert [e.reason for e in handled if e.model_name == model] == ["p99 regressed"]
    reason = dict(dlq[0].headers)["x-dlq-reason"].decode()
    assert reason.startswith("signature: unsigned control event")
    unverified = consumer.metrics.registry.get_sample_value(
        "modelbus_events_unverified_total", {"topic": ModelRollbackRequested.topic}
    )
    assert unverified == 1


async def test_a_message_larger_than_the_limit_never_stalls_its_partition(infra, unique):
    """A 1.5 MB garbage value (what stalled three consumer groups for good): dead-lettered
    unread and cut down, and the events behind it on the same partition are handled."""
    from aiokafka import AIOKafkaProducer

    from modelbus_platform.bus import DLQ_VALUE_BYTES

    model = f"big-{unique}"
    handled: list[str] = []
    done = asyncio.Event()

    async def handler(event: LabelObserved) -> None:
        if event.model_name != model:
            return  # the topic's earlier events (other tests') are read too
        handled.append(event.prediction_id)
        if len(handled) == 3:
            done.set()

    bus = await _bus(infra, f"db_{unique}")
    bus.subscribe(LabelObserved, group=f"g-{unique}", handler=handler)
    await bus.start()
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap, max_request_size=4_000_000)
    await producer.start()
    try:
        first = encode(LabelObserved(model_name=model, prediction_id="before", label=1))
        await producer.send_and_wait(
            first.topic, first.value, key=first.key,
            headers=[(k, v.encode()) for k, v in first.headers.items()],
        )  # fmt: skip
        await producer.send_and_wait(first.topic, b"\x00garbage" * 190_000, key=first.key)
        for pid in ("after-1", "after-2"):
            await bus.publish(LabelObserved(model_name=model, prediction_id=pid, label=0))
        await asyncio.wait_for(done.wait(), 60)
        [dead] = await _read_dlq(infra.kafka_bootstrap, LabelObserved.topic, model, 1)
    finally:
        await producer.stop()
        await bus.stop()

    assert handled == ["before", "after-1", "after-2"]
    headers = {k: v.decode() for k, v in dead.headers}
    assert headers["x-dlq-reason"].startswith("too_large: 1520000 bytes")
    assert headers["x-dlq-value-bytes"] == "1520000" and len(dead.value) == DLQ_VALUE_BYTES


async def test_a_lost_topic_comes_back_with_the_configured_partitions(infra, unique):
    """What a restarted memory broker does to the topics: they are gone. The bus makes its
    topics again with its own partition count (before a client auto-creates one)."""
    from aiokafka.admin import AIOKafkaAdminClient

    topic = f"lost-{unique}"
    bus = await _bus(infra, f"db_{unique}")
    bus.partitions = 4
    assert await bus.ensure_topics([topic]) == [topic]
    assert await bus.ensure_topics([topic]) == []  # there now: nothing made
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.kafka_bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
        for _ in range(50):
            if topic not in await admin.list_topics():
                break
            await asyncio.sleep(0.1)
        assert await bus.ensure_topics([topic]) == [topic]
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    assert len(described["partitions"]) == 4


async def test_a_checkpointed_group_replays_exactly_what_its_checkpoint_lacks(infra, unique):
    """The bus never commits a checkpointed group: a consumer that stops without a commit
    (a crash) is handed again exactly the records after the offsets its checkpoint covered."""
    model, group = f"c-{unique}", f"state-{unique}"

    arrived = asyncio.Condition()

    def consumer(seen: list[str]):
        async def on_labels(events: list[LabelObserved]) -> None:
            seen.extend(e.prediction_id for e in events if e.model_name == model)
            async with arrived:
                arrived.notify_all()

        return on_labels

    async def until(seen: list[str], last: str) -> None:
        async with asyncio.timeout(30), arrived:
            await arrived.wait_for(lambda: last in seen)

    first: list[str] = []
    bus = await _bus(infra, f"db7_{unique}")
    bus.subscribe_batch(LabelObserved, group=group, handler=consumer(first), checkpointed=True)
    with pytest.raises(ValueError, match="checkpointed or none"):
        bus.subscribe_batch(PredictionMade, group=group, handler=consumer([]))
    await bus.start()
    try:
        for i in range(100):
            await bus.publish(LabelObserved(model_name=model, prediction_id=f"p{i}", label=1))
        await until(first, "p99")
        offsets = bus.offsets(group)
        async with offsets.paused() as covered:
            checkpoint = list(first)  # the state as saved
        assert await offsets.commit(covered)
        for i in range(100, 150):
            await bus.publish(LabelObserved(model_name=model, prediction_id=f"p{i}", label=1))
        await until(first, "p149")
    finally:
        await bus.stop()  # no commit after the checkpoint: what a crash leaves
    assert checkpoint == [f"p{i}" for i in range(100)]

    replayed: list[str] = []
    again = await _bus(infra, f"db7_{unique}")
    again.subscribe_batch(LabelObserved, group=group, handler=consumer(replayed), checkpointed=True)
    await again.start()
    try:
        await until(replayed, "p149")
    finally:
        await again.stop()
    assert checkpoint + replayed == [f"p{i}" for i in range(150)]
