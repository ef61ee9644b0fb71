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


# -- bounded: no message stalls a partition ---------------------------------------------------


async def test_an_oversized_message_is_dead_lettered_unread_and_cut_down():
    from modelbus_platform.bus import DLQ_VALUE_BYTES

    bus, fake = make_bus()
    bus.max_event_bytes = 10_000
    seen = []

    async def handler(event):
        seen.append(event)

    event = LabelObserved(model_name="m", prediction_id="p", label=1)
    huge = b'{"label": "' + b"x" * 3_900_000 + b'"}'
    raw = raw_of(event, value=huge)
    raw.headers += [(f"h{i}", b"y" * 50_000) for i in range(200)]  # hostile headers too
    await bus.process(LabelObserved, "g", handler, raw)
    assert seen == []
    [(topic, value, headers)] = fake.published
    assert topic == "label.observed.v1.dlq"
    assert headers["x-dlq-reason"].startswith("too_large: 3900013 bytes, at most 10000")
    assert value == huge[:DLQ_VALUE_BYTES]
    assert headers["x-dlq-value-bytes"] == str(len(huge))
    assert len(headers) <= 64 + 10 and max(map(len, headers.values())) <= 4_000
    assert headers["ce_id"] == str(event.event_id)  # still traceable and replayable by id

    # the batch path does the same, and the rest of the batch is handled
    fake.published.clear()
    batch: list = []

    async def batch_handler(events):
        batch.extend(events)

    routes = {LabelObserved.topic: _route(batch_handler)}
    good = LabelObserved(model_name="m", prediction_id="q", label=0)
    await bus.process_batch("g", routes, [raw_of(event, value=huge), raw_of(good, offset=1)])
    assert [e.prediction_id for e in batch] == ["q"]
    assert [headers["x-dlq-reason"][:9] for _, _, headers in fake.published] == ["too_large"]


def _route(handler):
    from modelbus_platform.bus import _Route

    return _Route(LabelObserved, handler, False, batch=True)


class RefusingBroker(FakeBroker):
    """Refuses records above ``limit`` bytes as a broker does; or cannot be reached at all."""

    def __init__(self, limit: int, down: bool = False) -> None:
        super().__init__()
        self.limit, self.down = limit, down

    async def publish(self, value, topic, key=None, headers=None):
        from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError

        if self.down:
            raise KafkaConnectionError("no broker")
        if len(value) + sum(len(v) for v in (headers or {}).values()) > self.limit:
            raise MessageSizeTooLargeError("too large")
        await super().publish(value, topic, key, headers)


async def test_a_dead_letter_the_broker_refuses_is_sent_without_its_value_or_skipped():
    bus, _ = make_bus()
    event = LabelObserved(model_name="m", prediction_id="p", label=1)

    async def broken(event):
        raise RuntimeError("x" * 50_000)

    bus.broker = small = RefusingBroker(limit=20_000)  # type: ignore[assignment]
    padded = encode(event).value + b" " * 100_000  # valid JSON, large
    await bus.process(LabelObserved, "g", broken, raw_of(event, value=padded))
    [(_, value, headers)] = small.published  # the value did not fit: headers only
    assert value == b"" and headers["x-dlq-value-bytes"] == str(len(padded))
    assert headers["x-dlq-reason"].startswith("handler: RuntimeError: xxx")

    bus.broker = tiny = RefusingBroker(limit=10)  # type: ignore[assignment]
    await bus.process(LabelObserved, "g", broken, raw_of(event))  # does not raise: skipped
    assert tiny.published == []
    lost = bus.metrics.dead_letters_lost.labels(LabelObserved.topic)._value.get()
    assert lost == 1

    bus.broker = RefusingBroker(limit=10**9, down=True)  # type: ignore[assignment]
    with pytest.raises(Exception, match="no broker"):  # transient: redelivered, never lost
        await bus.process(LabelObserved, "g", broken, raw_of(event))


def test_an_error_lists_a_few_names_then_how_many_more():
    from modelbus_ml.inputs import few

    assert few(["a", "b"]) == "['a', 'b']"
    text = few([f"f{i}" for i in range(250_000)])
    assert text.endswith("... and 249995 more]") and len(text) < 100


# -- transient is not permanent ----------------------------------------------------------------


async def test_a_dependency_outage_is_waited_out_never_dead_lettered():
    """12 failures of MongoDB in a row (what dead-lettered 2,000 predictions with a 1.4 s retry
    budget): the message waits, readiness says so, and it is handled once MongoDB answers."""
    from pymongo.errors import AutoReconnect

    bus, fake = make_bus()
    bus.backoff_s, bus.backoff_max_s = 0.001, 0.005
    outage = {"left": 12}
    handled = []

    async def handler(event):
        if outage["left"]:
            outage["left"] -= 1
            assert not bus.dependencies_ok() or outage["left"] == 11
            raise AutoReconnect("mongo down")
        handled.append(event)

    event = LabelObserved(model_name="m", prediction_id="p", label=1)
    await bus.process(LabelObserved, "g", handler, raw_of(event))
    assert handled == [event] and fake.published == []  # handled, nothing dead-lettered
    assert bus.dependencies_ok() and bus.waiting == {}
    waited = bus.metrics.events_consumed.labels(event.topic, "g", "waited")._value.get()
    assert waited == 12


async def test_what_waits_is_transient_and_what_is_dead_lettered_is_permanent():
    import httpx
    from pymongo.errors import DuplicateKeyError, ServerSelectionTimeoutError

    from modelbus_platform.registry import RegistryUnavailable
    from modelbus_platform.transient import is_transient

    class Wrapped(Exception):
        pass

    def caused(exc):
        try:
            raise Wrapped("domain") from exc
        except Wrapped as wrapped:
            return wrapped

    transient = [
        ServerSelectionTimeoutError("no primary"),
        httpx.ConnectError("refused"),
        ConnectionRefusedError(),
        TimeoutError(),
        RegistryUnavailable("down"),
        caused(httpx.ReadTimeout("slow")),
    ]
    permanent = [ValueError("bad"), DuplicateKeyError("dup"), KeyError("x"), caused(ValueError())]
    assert all(map(is_transient, transient))
    assert not any(map(is_transient, permanent))


async def test_a_permanent_failure_after_a_wait_is_still_dead_lettered_and_readiness_recovers():
    bus, fake = make_bus()
    bus.backoff_s = 0.001
    calls = {"n": 0}

    async def handler(event):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionResetError("blip")
        raise ValueError("really bad")

    event = LabelObserved(model_name="m", prediction_id="p", label=1)
    await bus.process(LabelObserved, "g", handler, raw_of(event))
    [(_, _, headers)] = fake.published
    assert headers["x-dlq-reason"] == "handler: ValueError: really bad"
    assert calls["n"] == 1 + 3 and bus.dependencies_ok()


def test_a_library_that_logs_the_same_warning_30_times_a_second_writes_one_line_per_interval():
    import logging

    from modelbus_platform.logging import OncePerInterval

    now = {"t": 0.0}
    once = OncePerInterval(interval_s=30, clock=lambda: now["t"])

    def record(partition: int) -> logging.LogRecord:
        return logging.LogRecord(
            "aiokafka.consumer", logging.WARNING, "f", 1,
            "Topic %s not found in cluster metadata", (partition,), None,
        )  # fmt: skip

    passed = []
    for i in range(30 * 60):  # a minute of 30 per second
        now["t"] = i / 30
        r = record(i)
        if once.filter(r):
            passed.append(r)
    assert len(passed) == 2
    assert passed[1].getMessage().endswith("(899 like it in the last 30 s)")


class FakeConsumer:
    """An aiokafka consumer's lag surface: two partitions, one of them not assigned here."""

    def __init__(self) -> None:
        self.ends = {0: 10, 1: 5}
        self.committed_at = {0: 10, 1: 0}

    def subscription(self):
        return {"label.observed.v1"}

    def partitions_for_topic(self, topic):
        return set(self.ends)

    async def end_offsets(self, tps):
        return {tp: self.ends[tp.partition] for tp in tps}

    async def committed(self, tp):
        return self.committed_at[tp.partition]


async def test_lag_counts_every_partition_and_a_stalled_group_turns_readiness_off(monkeypatch):
    bus, _ = make_bus()
    bus.stall_s = 60
    consumer = FakeConsumer()
    bus._subscribers["g"] = type("Sub", (), {"consumer": consumer})()
    now = {"t": 0.0}
    monkeypatch.setattr("modelbus_platform.bus.time.monotonic", lambda: now["t"])

    lag = await bus.sample_lag()
    assert lag == {("label.observed.v1", "g"): 5}  # the partition nobody reads counts
    now["t"] = 59
    await bus.sample_lag()
    assert bus.consumers_ok()
    now["t"] = 61  # a backlog, and no commit for a minute: stalled
    await bus.sample_lag()
    assert not bus.consumers_ok() and "5 messages behind" in bus.stalled["g"]

    consumer.committed_at[1] = 2  # progress: ready again
    now["t"] = 62
    await bus.sample_lag()
    assert bus.consumers_ok()

    bus.waiting["g"] = "mongo down"  # waiting for a dependency is not a stall
    now["t"] = 500
    await bus.sample_lag()
    assert bus.consumers_ok()
    bus.waiting.clear()
    consumer.committed_at[1] = 5  # caught up: no backlog, never stalled however long
    now["t"] = 10_000
    await bus.sample_lag()
    now["t"] = 20_000
    await bus.sample_lag()
    assert bus.consumers_ok()
