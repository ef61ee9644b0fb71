"""The dead-letter tool against the real embedded broker: events dead-lettered by the bus's own
path are listed, inspected and replayed to their source topic, where the consumer handles them
with their original ids and headers (and dedupes a second replay); a dry run publishes nothing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from modelbus_contracts import LabelObserved, encode
from modelbus_embedded.testing import service_app
from modelbus_platform.bus import (
    DLQ_OFFSET,
    DLQ_PARTITION,
    DLQ_REASON,
    DLQ_SOURCE_TOPIC,
    EventBus,
    MemoryProcessedEvents,
    dlq_topic,
)
from modelbus_platform.dlq import (
    REPLAYED_AT,
    REPLAYED_FROM,
    DeadLetters,
    ReplayRequest,
    dlq_router,
)
from modelbus_platform.metrics import Metrics

pytestmark = pytest.mark.integration

TOPIC = LabelObserved.topic
DLQ = dlq_topic(TOPIC)


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Each partition's high watermark, as a fetch reports it (the embedded broker's ListOffsets
    answer falls short after a write of several records in one batch)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, fetch_max_wait_ms=100)
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        async with asyncio.timeout(10):
            while any(consumer.highwater(tp) is None for tp in tps):
                await consumer.getmany(timeout_ms=100)
        return {tp.partition: consumer.highwater(tp) for tp in tps}
    finally:
        await consumer.stop()


async def read(bootstrap: str, topic: str, partition: int, start: int, stop: int) -> list:
    """The records ``[start, stop)`` of a partition, as a consumer of the topic gets them."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    tp = TopicPartition(topic, partition)
    consumer.assign([tp])
    consumer.seek(tp, start)
    out = []
    try:
        async with asyncio.timeout(20):
            while len(out) < stop - start:
                out.append(await consumer.getone(tp))
    finally:
        await consumer.stop()
    return out


async def wait_until(predicate, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if await predicate():
                return
            await asyncio.sleep(0.1)


async def test_dead_letters_are_listed_inspected_and_replayed_to_their_topic(infra, unique):
    bootstrap = infra.kafka_bootstrap
    model, group = f"m-{unique}", f"g-{unique}"
    tool = DeadLetters(bootstrap)
    failing = {"p2", "p3"}
    handled: list[LabelObserved] = []

    async def handler(event: LabelObserved) -> None:
        if event.model_name != model:
            return
        if event.prediction_id in failing:
            raise RuntimeError("store down")
        handled.append(event)

    bus = EventBus(
        bootstrap,
        service="dlqtest",
        metrics=Metrics("dlqtest"),
        processed=MemoryProcessedEvents(),
        retries=0,
        backoff_s=0.01,
    )
    # "latest": the group reads only what is published from now on, not the malformed records
    # earlier tests left in the topic (it would dead-letter them too)
    bus.subscribe(LabelObserved, group=group, handler=handler, offset_reset="latest")
    await bus.start()
    try:

        async def reading() -> bool:  # a sentinel handled: the group has its positions
            await bus.publish(LabelObserved(model_name=model, prediction_id="sentinel", label=0))
            await asyncio.sleep(0.5)
            return any(e.prediction_id == "sentinel" for e in handled)

        await wait_until(reading)
        before = {t.topic: t for t in (await tool.list()).topics}[DLQ]
        started = datetime.now(UTC)
        events = {
            f"p{i}": LabelObserved(model_name=model, prediction_id=f"p{i}", label=1)
            for i in range(1, 6)
        }
        await bus.publish(events["p1"])
        await bus.publish(events["p2"])
        await bus.publish(events["p3"])
        bad = encode(events["p4"])  # valid headers, a body that breaks the contract
        await bus.broker.publish(b'{"label": [7]}', bad.topic, key=bad.key, headers=bad.headers)
        await bus.publish(events["p5"])

        async def p5_handled() -> bool:
            return any(e.prediction_id == "p5" for e in handled)

        await wait_until(p5_handled)
        # two records in the DLQ whose source topic is not ours, written in one batch: listed,
        # never replayed
        forged = [
            encode(LabelObserved(model_name=model, prediction_id=p, label=0)) for p in ("p6", "p7")
        ]
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50)
        await producer.start()
        try:
            sends = []
            for record in forged:
                headers = {
                    **record.headers,
                    DLQ_SOURCE_TOPIC: "payments.v1",
                    DLQ_REASON: "handler: forged",
                }
                sends.append(
                    await producer.send(
                        DLQ,
                        record.value,
                        key=record.key,
                        headers=[(k, v.encode()) for k, v in headers.items()],
                    )
                )
            await asyncio.gather(*sends)
        finally:
            await producer.stop()

        # -- list: five more records, in the partition of the model's key
        after = {t.topic: t for t in (await tool.list()).topics}[DLQ]
        grew = {
            p.partition: p.count - q.count
            for p, q in zip(after.partitions, before.partitions, strict=True)
            if p.count != q.count
        }
        assert list(grew.values()) == [5]
        partition = next(iter(grew))
        start = before.partitions[partition].next_offset
        assert after.count == before.count + 5
        assert after.scanned == after.count  # all read: the counts below are exact
        new_reasons = {k: after.reasons[k] - before.reasons.get(k, 0) for k in after.reasons}
        assert {k: n for k, n in new_reasons.items() if n} == {"handler": 4, "contract": 1}
        assert after.newest_at is not None and after.newest_at >= started

        # -- inspect: offsets, reasons, CloudEvents ids, where each came from
        page = await tool.inspect(DLQ, partition=partition, from_offset=start)
        assert [r.offset for r in page.records] == [start + i for i in range(5)]
        assert page.next_offset == start + 5
        ids = [str(events[p].event_id) for p in ("p2", "p3", "p4")]
        forged_ids = [record.headers["ce_id"] for record in forged]
        assert [r.event_id for r in page.records] == [*ids, *forged_ids]
        kinds = ["handler", "handler", "contract", "handler", "handler"]
        assert [r.reason_kind for r in page.records] == kinds
        assert page.records[0].reason == "handler: RuntimeError: store down"
        assert [r.replayable for r in page.records] == [True, True, True, False, False]
        assert "payments.v1" in page.records[4].refusal
        assert all(r.subject == model and r.event_type == TOPIC for r in page.records)
        assert page.records[2].preview == '{"label": [7]}'
        originals = {}
        for record in page.records[:3]:
            source_partition = int(record.dlq_headers[DLQ_PARTITION])
            offset = int(record.dlq_headers[DLQ_OFFSET])
            [original] = await read(bootstrap, TOPIC, source_partition, offset, offset + 1)
            assert dict(original.headers)["ce_id"].decode() == record.event_id
            originals[record.event_id] = original
        newest = await tool.inspect(DLQ, partition=partition, limit=2)
        assert [r.offset for r in newest.records] == [start + 3, start + 4]

        # -- dry runs: counted, nothing published
        source_before = await end_offsets(bootstrap, TOPIC)
        whole = ReplayRequest(
            partition=partition, from_offset=start, to_offset=start + 4, dry_run=True
        )
        dry = await tool.replay(DLQ, whole)
        assert (dry.read, dry.skipped) == (5, 0)
        assert [r.event_id for r in dry.replayed] == ids
        assert all(r.new_offset is None for r in dry.replayed)
        assert [r.offset for r in dry.refused] == [start + 3, start + 4]
        one = await tool.replay(TOPIC, whole.model_copy(update={"event_id": events["p3"].event_id}))
        assert ([r.event_id for r in one.replayed], one.skipped) == ([ids[1]], 4)

        # -- the API answers the same, and refuses what is out of range with the reason
        app = service_app(dlq_router(tool))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as http:
            listed = (await http.get("/admin/dlq")).json()
            assert DLQ in {t["topic"] for t in listed["topics"]}
            answer = await http.get(
                f"/admin/dlq/{DLQ}",
                params={"partition": partition, "from_offset": start, "limit": 2},
            )
            assert answer.status_code == 200
            assert [r["event_id"] for r in answer.json()["records"]] == ids[:2]
            assert answer.json()["next_offset"] == start + 2
            body = whole.model_dump(mode="json")
            answer = await http.post(f"/admin/dlq/{DLQ}/replay", json=body)
            assert answer.status_code == 200
            assert [r["event_id"] for r in answer.json()["replayed"]] == ids
            end = after.partitions[partition].next_offset
            answer = await http.post(f"/admin/dlq/{DLQ}/replay", json={**body, "to_offset": end})
            assert answer.status_code == 422
            assert answer.json()["reason"] == "offsets_out_of_range"
            assert (
                f"holds offsets {after.partitions[partition].first_offset}..{end - 1}"
                in (answer.json()["error"])
            )
            answer = await http.get(f"/admin/dlq/{DLQ}", params={"partition": 99})
            assert (answer.status_code, answer.json()["reason"]) == (404, "unknown_partition")
        assert await end_offsets(bootstrap, TOPIC) == source_before

        # -- the replay: the handler failures (the contract one is left, the forged refused)
        failing.clear()
        replay = whole.model_copy(update={"dry_run": False, "reason_contains": "HANDLER"})
        done = await tool.replay(DLQ, replay)
        assert [r.event_id for r in done.replayed] == ids[:2]
        assert done.skipped == 1 and [r.offset for r in done.refused] == [start + 3, start + 4]
        assert not done.failed
        source_after = await end_offsets(bootstrap, TOPIC)
        source_partition = originals[ids[0]].partition
        assert source_after == {
            **source_before,
            source_partition: source_before[source_partition] + 2,
        }
        assert [(r.new_partition, r.new_offset) for r in done.replayed] == [
            (source_partition, source_before[source_partition]),
            (source_partition, source_before[source_partition] + 1),
        ]
        republished = await read(
            bootstrap,
            TOPIC,
            source_partition,
            source_before[source_partition],
            source_after[source_partition],
        )
        for record, dead in zip(republished, page.records[:2], strict=True):
            original = originals[dead.event_id]
            assert (record.key, record.value) == (original.key, original.value)
            headers = list(record.headers)
            assert headers[:-2] == list(original.headers)
            assert headers[-2] == (REPLAYED_FROM, f"{DLQ}/{partition}/{dead.offset}".encode())
            assert headers[-1][0] == REPLAYED_AT
            assert datetime.fromisoformat(headers[-1][1].decode()) >= started

        async def replayed_handled() -> bool:
            return {"p2", "p3"} <= {e.prediction_id for e in handled}

        await wait_until(replayed_handled)
        by_id = {e.prediction_id: e.event_id for e in handled}
        assert str(by_id["p2"]) == ids[0] and str(by_id["p3"]) == ids[1]

        # -- a second replay of the same range is safe: the consumer skips the duplicates
        again = await tool.replay(DLQ, replay)
        assert len(again.replayed) == 2
        duplicates = bus.metrics.events_consumed.labels(TOPIC, group, "duplicate")

        async def deduped() -> bool:
            return duplicates._value.get() >= 2

        await wait_until(deduped)
        ours = sorted(e.prediction_id for e in handled if e.prediction_id != "sentinel")
        assert ours == ["p1", "p2", "p3", "p5"]
    finally:
        await bus.stop()
