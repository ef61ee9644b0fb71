"""Unit tests of the bus's safety net, on fakes (the HTTP shell: ``test_http.py``)."""

from __future__ import annotations

import uuid

import pytest

from modelbus_contracts import LabelObserved, encode
from modelbus_embedded.testing import ConsumedRecord
from modelbus_platform.bus import EventBus, MemoryProcessedEvents
from modelbus_platform.metrics import Metrics


class FakeBroker:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, dict]] = []

    async def publish(self, value, topic, key=None, headers=None):
        self.published.append((topic, value, headers or {}))


def make_bus() -> tuple[EventBus, FakeBroker]:
    bus = EventBus(
        "127.0.0.1:1",
        service="t",
        metrics=Metrics("t"),
        processed=MemoryProcessedEvents(),
        retries=2,
        backoff_s=0,
    )
    fake = FakeBroker()
    bus.broker = fake  # type: ignore[assignment]
    return bus, fake


def raw_of(event, value: bytes | None = None, offset: int = 0) -> ConsumedRecord:
    record = encode(event)
    return ConsumedRecord(
        record.topic,
        0,
        offset,
        record.key,
        value if value is not None else record.value,
        [(k, v.encode()) for k, v in record.headers.items()],
    )


async def test_handler_runs_once_per_event_id():
    bus, fake = make_bus()
    seen = []

    async def handler(event):
        seen.append(event.event_id)

    event = LabelObserved(model_name="m", prediction_id="p", label=1)
    for offset in range(3):
        await bus.process(LabelObserved, "g", handler, raw_of(event, offset=offset))
    assert seen == [event.event_id]
    assert fake.published == []


async def test_transient_failure_is_retried_then_succeeds():
    bus, fake = make_bus()
    calls = 0

    async def flaky(event):
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("store blip")

    await bus.process(
        LabelObserved, "g", flaky, raw_of(LabelObserved(model_name="m", prediction_id="p", label=1))
    )
    assert calls == 3
    assert fake.published == []


async def test_persistent_failure_is_dead_lettered_with_reason_and_attempts():
    bus, fake = make_bus()

    async def broken(event):
        raise ValueError("cannot handle")

    event = LabelObserved(model_name="m", prediction_id="p", label=1)
    await bus.process(LabelObserved, "g", broken, raw_of(event))
    topic, value, headers = fake.published[0]
    assert topic == "label.observed.v1.dlq"
    assert value == encode(event).value
    assert headers["x-dlq-reason"] == "handler: ValueError: cannot handle"
    assert headers["x-dlq-attempts"] == "3"
    assert headers["ce_id"] == str(event.event_id)
    # not marked processed: a replay after a fix would be handled
    assert not await bus.processed.seen("g", event.event_id)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"not json", "not valid JSON"),
        (b'{"model_name":"m","label":1}', "prediction_id"),
        (b'{"model_name":"m","prediction_id":"p","label":NaN}', "not valid JSON"),
    ],
)
async def test_malformed_messages_are_dead_lettered_without_calling_the_handler(value, reason):
    bus, fake = make_bus()
    called = False

    async def handler(event):
        nonlocal called
        called = True

    event = LabelObserved(model_name="m", prediction_id="p", label=1)
    await bus.process(LabelObserved, "g", handler, raw_of(event, value=value))
    assert not called
    assert reason in fake.published[0][2]["x-dlq-reason"]
    assert fake.published[0][2]["x-dlq-attempts"] == "0"


async def test_wrong_event_type_on_a_topic_is_dead_lettered():
    bus, fake = make_bus()
    raw = raw_of(LabelObserved(model_name="m", prediction_id="p", label=1))
    raw.headers = [(k, b"prediction.made.v1" if k == "ce_type" else v) for k, v in raw.headers]

    async def handler(event):
        raise AssertionError("must not be called")

    await bus.process(LabelObserved, "g", handler, raw)
    assert "expected label.observed.v1" in fake.published[0][2]["x-dlq-reason"]


def test_event_ids_are_unique_uuids():
    a, b = (LabelObserved(model_name="m", prediction_id="p", label=0) for _ in range(2))
    assert isinstance(a.event_id, uuid.UUID) and a.event_id != b.event_id
