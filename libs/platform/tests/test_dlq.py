"""The dead-letter tool's pure parts (headers, filters, refusals, ranges), its HTTP errors and
its CLI without a broker (against the broker: ``test_dlq_integration.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import httpx
import pytest
import structlog
from aiokafka import TopicPartition

from modelbus_contracts import (
    ALL_EVENTS,
    LabelObserved,
    ModelPromoted,
    ModelRollbackRequested,
    encode,
)
from modelbus_embedded.testing import ConsumedRecord, service_app
from modelbus_platform import dlq
from modelbus_platform.bus import (
    DLQ_AT,
    DLQ_HEADER_PREFIX,
    DLQ_REASON,
    DLQ_SOURCE_TOPIC,
    EventBus,
    MemoryProcessedEvents,
    all_topics,
    dlq_topic,
)
from modelbus_platform.dlq import (
    BadRange,
    DeadLetter,
    DeadLetters,
    OffsetsOutOfRange,
    RangeTooLarge,
    ReplayRequest,
    UnknownPartition,
    UnknownTopic,
)
from modelbus_platform.metrics import Metrics
from modelbus_platform.signing import Signer, Verifier, keypair, private_key, public_key

TOPIC = LabelObserved.topic
DLQ = dlq_topic(TOPIC)
NOWHERE = "127.0.0.1:1"  # nothing listens: a call that reaches the broker fails


class FakeBroker:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, bytes | None, dict[str, str]]] = []

    async def publish(self, value, topic, key=None, headers=None):
        self.published.append((topic, value, key, dict(headers or {})))


async def dead_lettered(event, signer: Signer | None = None) -> tuple[DeadLetter, list]:
    """``event`` (signed by ``signer``) dead-lettered by the bus's own path (a handler that
    keeps failing), read back as the tool reads a DLQ record; and the original headers."""
    bus = EventBus(
        NOWHERE,
        service="svc",
        metrics=Metrics("svc"),
        processed=MemoryProcessedEvents(),
        retries=0,
        backoff_s=0,
    )
    fake = FakeBroker()
    bus.broker = fake  # type: ignore[assignment]
    record = encode(event)
    sent = signer.sign(record.topic, record.headers, record.value) if signer else record.headers
    original = [(k, v.encode()) for k, v in sent.items()]
    raw = ConsumedRecord(record.topic, 2, 41, record.key, record.value, original)

    async def broken(_):
        raise ValueError("cannot handle")

    await bus.process(type(event), "grp", broken, raw)
    topic, value, key, headers = fake.published[0]
    consumed = ConsumedRecord(
        topic, 1, 7, key, value, [(k, v.encode()) for k, v in headers.items()]
    )
    consumed.timestamp = 1_700_000_000_000  # type: ignore[attr-defined]
    return DeadLetter.of(consumed), original


def letter(headers: dict[str, str], topic: str = DLQ, value: bytes = b"{}") -> DeadLetter:
    encoded = tuple((k, v.encode()) for k, v in headers.items())
    return DeadLetter(topic, 0, 5, None, b"m", value, encoded)


# -- the records the bus dead-letters ----------------------------------------------------------


async def test_a_record_the_bus_dead_lettered_reads_back_with_its_reason_source_and_ids():
    event = LabelObserved(model_name="m", prediction_id="p", label=1)
    found, _ = await dead_lettered(event)
    assert found.topic == DLQ
    assert found.source_topic == TOPIC
    assert found.reason == "handler: ValueError: cannot handle"
    assert found.event_id == str(event.event_id)
    assert found.origin == f"{DLQ}/1/7"
    assert set(found.dlq_headers) == {
        f"{DLQ_HEADER_PREFIX}{name}"
        for name in (
            "reason",
            "source-topic",
            "partition",
            "offset",
            "group",
            "service",
            "attempts",
            "at",
        )
    }
    assert found.dlq_headers[f"{DLQ_HEADER_PREFIX}partition"] == "2"
    assert found.dlq_headers[f"{DLQ_HEADER_PREFIX}offset"] == "41"
    assert abs(found.dead_lettered_at - datetime.now(UTC)) < timedelta(minutes=1)
    assert dlq.refusal(found) is None


async def test_a_replayed_record_has_the_original_headers_and_where_it_was_replayed_from():
    event = LabelObserved(model_name="m", prediction_id="p", label=1)
    found, original = await dead_lettered(event)
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    headers = dlq.replay_headers(found, at)
    assert headers[: len(original)] == original
    assert headers[len(original) :] == [
        (dlq.REPLAYED_FROM, f"{DLQ}/1/7".encode()),
        (dlq.REPLAYED_AT, at.isoformat().encode()),
    ]


async def test_a_record_replayed_and_dead_lettered_again_names_only_its_latest_replay():
    event = LabelObserved(model_name="m", prediction_id="p", label=1)
    found, original = await dead_lettered(event)
    again = DeadLetter(
        found.topic,
        0,
        99,
        None,
        found.key,
        found.value,
        (*dlq.replay_headers(found, datetime(2026, 1, 1, tzinfo=UTC)), *found.headers[-8:]),
    )
    later = datetime(2026, 2, 1, tzinfo=UTC)
    headers = dlq.replay_headers(again, later)
    assert headers == [
        *original,
        (dlq.REPLAYED_FROM, f"{DLQ}/0/99".encode()),
        (dlq.REPLAYED_AT, later.isoformat().encode()),
    ]


async def test_a_replayed_control_event_still_verifies():
    private, public = keypair()
    deployer = Signer("deployer", private_key(private))
    verifier = Verifier({"deployer": public_key(public)})
    event = ModelRollbackRequested(model_name="m", from_version=3, to_version=2, reason="p99")
    found, original = await dead_lettered(event, deployer)
    headers = dlq.replay_headers(found, datetime.now(UTC))
    assert verifier.problem(event.topic, original, found.value) is None
    assert verifier.problem(event.topic, headers, found.value) is None
    assert verifier.problem(event.topic, found.headers, found.value) is None


async def test_the_view_shows_the_cloudevents_headers_size_and_a_bounded_preview():
    event = LabelObserved(model_name="churn", prediction_id="p" * 2000, label=1)
    found, _ = await dead_lettered(event)
    shown = dlq.view(found)
    assert (shown.event_type, shown.event_id, shown.subject) == (
        "label.observed.v1",
        str(event.event_id),
        "churn",
    )
    assert shown.key == "churn"
    assert shown.value_bytes == len(encode(event).value) > dlq.PREVIEW_BYTES
    assert shown.preview == encode(event).value[: dlq.PREVIEW_BYTES].decode()
    assert shown.preview_truncated
    assert shown.reason_kind == "handler" and shown.replayable and shown.refusal is None
    assert shown.timestamp == datetime.fromtimestamp(1_700_000_000, UTC)
    assert shown.dead_lettered_at == found.dead_lettered_at


def test_a_short_value_is_shown_whole():
    assert dlq.preview(b'{"a": 1}') == ('{"a": 1}', False)
    assert dlq.preview(b"x" * 10, limit=10) == ("x" * 10, False)
    assert dlq.preview(b"x" * 11, limit=10) == ("x" * 10, True)


def test_the_last_of_a_repeated_header_counts_and_a_bad_time_is_none():
    found = DeadLetter(
        DLQ, 0, 0, None, None, b"", ((DLQ_REASON, b"contract: a"), (DLQ_REASON, b"handler: b"))
    )
    assert found.reason == "handler: b"
    assert letter({DLQ_AT: "yesterday"}).dead_lettered_at is None
    naive = letter({DLQ_AT: "2026-01-02T03:04:05"}).dead_lettered_at
    assert naive == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("contract: invalid event", "contract"),
        ("signature: unsigned control event", "signature"),
        ("handler: RuntimeError: boom", "handler"),
        ("something odd", "other"),
        ("", "none"),
        (None, "none"),
    ],
)
def test_reason_kind_is_the_reasons_prefix(reason, kind):
    assert dlq.reason_kind(reason) == kind


# -- which topics, which records ---------------------------------------------------------------


def test_a_topic_is_a_modelbus_dlq_topic_or_the_source_of_one():
    assert dlq.resolve_topic(DLQ) == DLQ
    assert dlq.resolve_topic(TOPIC) == DLQ
    for name in ("nope.v1", "nope.v1.dlq", DLQ + ".dlq", ""):
        with pytest.raises(UnknownTopic):
            dlq.resolve_topic(name)
    assert set(all_topics()) == dlq.DLQ_TOPICS | dlq.SOURCE_TOPICS
    assert {cls.topic for cls in ALL_EVENTS} == dlq.SOURCE_TOPICS


@pytest.mark.parametrize(
    ("headers", "topic", "why"),
    [
        ({}, DLQ, "no x-dlq-source-topic header"),
        ({DLQ_SOURCE_TOPIC: ""}, DLQ, "no x-dlq-source-topic header"),
        (
            {DLQ_SOURCE_TOPIC: "payments.v1"},
            DLQ,
            "its source topic 'payments.v1' is not a modelbus topic",
        ),
        ({DLQ_SOURCE_TOPIC: DLQ}, DLQ, f"its source topic '{DLQ}' is not a modelbus topic"),
        (
            {DLQ_SOURCE_TOPIC: ModelPromoted.topic},
            DLQ,
            f"its source topic {ModelPromoted.topic} does not dead-letter to {DLQ}",
        ),
        ({DLQ_SOURCE_TOPIC: TOPIC}, DLQ, None),
    ],
)
def test_a_record_without_a_known_source_topic_is_refused(headers, topic, why):
    assert dlq.refusal(letter(headers, topic)) == why


def test_filters_select_by_reason_text_and_event_id():
    event_id = uuid.uuid4()
    found = letter({DLQ_REASON: "handler: TimeoutError: Mongo", "ce_id": str(event_id)})
    assert dlq.matches(found)
    assert dlq.matches(found, reason_contains="mongo")  # case does not matter
    assert not dlq.matches(found, reason_contains="contract")
    assert dlq.matches(found, event_id=event_id)
    assert dlq.matches(found, event_id=str(event_id).upper())
    assert not dlq.matches(found, event_id=uuid.uuid4())
    assert dlq.matches(found, reason_contains="timeout", event_id=event_id)
    assert not dlq.matches(found, reason_contains="contract", event_id=event_id)
    assert not dlq.matches(letter({}), reason_contains="x")
    assert not dlq.matches(letter({}), event_id=event_id)


# -- ranges ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("counts", "budget"),
    [([5, 0, 7], 100), ([50, 1, 50], 30), ([10_000, 10_000, 3], 10_000), ([0, 0], 5), ([3], 0)],
)
def test_a_read_budget_is_shared_and_never_exceeded(counts, budget):
    shares = dlq.allocate(counts, budget)
    assert len(shares) == len(counts)
    assert all(0 <= share <= count for share, count in zip(shares, counts, strict=True))
    assert sum(shares) == min(budget, sum(counts))
    # no partition is starved while another gets more than an equal share
    open_shares = [s for s, c in zip(shares, counts, strict=True) if s < c]
    if open_shares:
        assert max(shares) - min(open_shares) <= 1


OFFSETS = {0: (0, 0), 1: (10, 20), 2: (0, 3)}


def test_inspect_reads_the_newest_of_each_partition_or_of_one():
    assert dlq.inspect_ranges(OFFSETS, limit=5) == {0: (0, 0), 1: (15, 20), 2: (0, 3)}
    assert dlq.inspect_ranges(OFFSETS, partition=1, limit=5) == {1: (15, 20)}


def test_inspect_reads_from_an_offset_up_to_another_or_the_limit():
    assert dlq.inspect_ranges(OFFSETS, partition=1, from_offset=12, limit=5) == {1: (12, 17)}
    assert dlq.inspect_ranges(OFFSETS, partition=1, from_offset=18, limit=5) == {1: (18, 20)}
    assert dlq.inspect_ranges(OFFSETS, partition=1, from_offset=12, to_offset=13) == {1: (12, 14)}
    assert dlq.inspect_ranges(OFFSETS, partition=1, to_offset=13, limit=2) == {1: (12, 14)}
    assert dlq.inspect_ranges(OFFSETS, partition=1, to_offset=11, limit=5) == {1: (10, 12)}


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"partition": 7}, UnknownPartition, "no partition 7 (partitions: [0, 1, 2])"),
        ({"from_offset": 1}, BadRange, "from_offset and to_offset need a partition"),
        ({"partition": 1, "from_offset": 9}, OffsetsOutOfRange, "holds offsets 10..19"),
        ({"partition": 1, "to_offset": 20}, OffsetsOutOfRange, "holds offsets 10..19"),
        ({"partition": 0, "from_offset": 0}, OffsetsOutOfRange, "partition 0 holds no records"),
        ({"partition": 1, "from_offset": 15, "to_offset": 12}, BadRange, "is after"),
        ({"limit": 0}, RangeTooLarge, f"1 to {dlq.INSPECT_MAX}"),
        ({"limit": dlq.INSPECT_MAX + 1}, RangeTooLarge, f"1 to {dlq.INSPECT_MAX}"),
    ],
)
def test_inspect_refuses_what_the_partition_does_not_hold(options, error, message):
    with pytest.raises(error, match=re.escape(message)):
        dlq.inspect_ranges(OFFSETS, **options)


def test_a_replay_range_must_be_held_and_bounded():
    assert dlq.replay_range(OFFSETS, 1, 10, 19, 100) == (10, 20)
    assert dlq.replay_range(OFFSETS, 2, 1, 1, 1) == (1, 2)
    with pytest.raises(RangeTooLarge, match="11 records: one replay takes at most 10"):
        dlq.replay_range(OFFSETS, 1, 0, 10, 10)
    with pytest.raises(BadRange):
        dlq.replay_range(OFFSETS, 1, 15, 14, 100)
    with pytest.raises(
        OffsetsOutOfRange, match=r"offsets 9\.\.12: partition 1 holds offsets 10\.\.19"
    ):
        dlq.replay_range(OFFSETS, 1, 9, 12, 100)
    with pytest.raises(OffsetsOutOfRange, match=r"holds offsets 10\.\.19"):
        dlq.replay_range(OFFSETS, 1, 15, 20, 100)
    with pytest.raises(UnknownPartition):
        dlq.replay_range(OFFSETS, 3, 0, 0, 100)


# -- the HTTP API and the CLI without a broker -------------------------------------------------


@pytest.fixture
def http():
    tool = DeadLetters(NOWHERE, max_records=50)
    app = service_app(dlq.dlq_router(tool))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_an_unknown_topic_is_404_before_the_broker_is_asked(http):
    answer = await http.get("/admin/dlq/payments.v1")
    assert answer.status_code == 404
    assert answer.json()["reason"] == "unknown_topic"
    body = {"partition": 0, "from_offset": 0, "to_offset": 1}
    answer = await http.post("/admin/dlq/payments.v1.dlq/replay", json=body)
    assert answer.status_code == 404 and "payments.v1.dlq" in answer.json()["error"]


async def test_a_replay_over_the_cap_or_backwards_is_422_before_the_broker_is_asked(http):
    body = {"partition": 0, "from_offset": 0, "to_offset": 50}
    answer = await http.post(f"/admin/dlq/{DLQ}/replay", json=body)
    assert answer.status_code == 422
    assert answer.json() == {
        "error": "51 records: one replay takes at most 50",
        "reason": "range_too_large",
    }
    body = {"partition": 0, "from_offset": 5, "to_offset": 4}
    answer = await http.post(f"/admin/dlq/{DLQ}/replay", json=body)
    assert (answer.status_code, answer.json()["reason"]) == (422, "bad_range")


@pytest.mark.parametrize(
    "query",
    [f"limit={dlq.INSPECT_MAX + 1}", "limit=0", "partition=-1", "from_offset=x", "to_offset=-1"],
)
async def test_bad_inspect_parameters_are_422(http, query):
    answer = await http.get(f"/admin/dlq/{DLQ}?{query}")
    assert (answer.status_code, answer.json()["reason"]) == (422, "validation_error")


@pytest.mark.parametrize(
    "body",
    [
        {"partition": 0, "from_offset": 0},
        {"partition": 0, "from_offset": -1, "to_offset": 1},
        {"partition": 0, "from_offset": 0, "to_offset": 1, "event_id": "not-a-uuid"},
        {"partition": 0, "from_offset": 0, "to_offset": 1, "reason_contains": "x" * 501},
        {"partition": 0, "from_offset": 0, "to_offset": 1, "reason_contain": "handler"},
    ],
)
async def test_a_bad_replay_body_is_422(http, body):
    answer = await http.post(f"/admin/dlq/{DLQ}/replay", json=body)
    assert (answer.status_code, answer.json()["reason"]) == (422, "validation_error")


async def test_without_a_broker_every_route_is_503_not_500(http):
    body = {"partition": 0, "from_offset": 0, "to_offset": 1}
    for answer in (
        await http.get("/admin/dlq"),
        await http.get(f"/admin/dlq/{DLQ}"),
        await http.post(f"/admin/dlq/{DLQ}/replay", json=body),
    ):
        assert answer.status_code == 503
        assert answer.json()["reason"] == "broker_unavailable"
        assert NOWHERE in answer.json()["error"]


def test_the_cli_says_what_is_wrong_with_its_exit_status(capsys):
    tool = DeadLetters(NOWHERE, max_records=50)
    assert dlq.main(["inspect", "payments.v1"], tool=tool) == 2
    assert "neither a modelbus topic" in capsys.readouterr().err
    replay = ["replay", TOPIC, "--partition", "0", "--from", "0", "--to", "50"]
    assert dlq.main(replay, tool=tool) == 2
    assert "one replay takes at most 50" in capsys.readouterr().err
    assert dlq.main(["list"], tool=tool) == 3
    assert NOWHERE in capsys.readouterr().err
    with pytest.raises(SystemExit):
        dlq.main(["replay", TOPIC, "--partition", "0"], tool=tool)  # no range


def test_the_cli_reads_the_services_settings(monkeypatch):
    monkeypatch.setenv("MODELBUS_KAFKA_BOOTSTRAP", "kafka.example:9093")
    monkeypatch.setenv("MODELBUS_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("MODELBUS_KAFKA_SASL_USERNAME", "ops")
    monkeypatch.setenv("MODELBUS_KAFKA_SASL_PASSWORD", "secret")
    from modelbus_platform.settings import ServiceSettings

    tool = DeadLetters.from_settings(ServiceSettings())
    assert tool.bootstrap == "kafka.example:9093"
    options = tool.security.client_options()
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_plain_username"] == "ops"


def test_the_tables_show_what_the_answers_hold():
    summary = dlq.TopicSummary(
        topic=DLQ,
        source_topic=TOPIC,
        count=3,
        partitions=[dlq.PartitionSummary(partition=1, first_offset=4, next_offset=7, count=3)],
        scanned=2,
        oldest_at=datetime(2026, 1, 1, tzinfo=UTC),
        newest_at=datetime(2026, 1, 2, tzinfo=UTC),
        reasons={"contract": 1, "handler": 1},
    )
    empty = summary.model_copy(update={"topic": "x.dlq", "count": 0, "partitions": []})
    listed = dlq.format_list(dlq.DlqList(topics=[summary, empty], scan_limit=2, complete=False))
    assert DLQ in listed and "x.dlq" not in listed
    assert "1:3" in listed and "contract=1 handler=1" in listed
    assert "2026-01-01T00:00:00+00:00" in listed
    assert "newest 2 records" in listed
    assert "x.dlq" in dlq.format_list(
        dlq.DlqList(topics=[empty], scan_limit=2, complete=True), every=True
    )
    result = dlq.ReplayResult(
        topic=DLQ,
        partition=1,
        from_offset=4,
        to_offset=6,
        dry_run=True,
        read=3,
        skipped=1,
        replayed=[
            dlq.ReplayedRecord(
                offset=4,
                source_topic=TOPIC,
                event_id="e1",
                event_type=TOPIC,
                new_partition=None,
                new_offset=None,
            )
        ],
        refused=[dlq.RefusedRecord(offset=6, event_id=None, why="no source")],
        failed=[],
    )
    text = dlq.format_replay(result)
    assert "read 3, would replay 1, skipped 1 (filters), refused 1, failed 0" in text
    assert "would replay 4 label.observed.v1 e1" in text
    assert "refused 6 -: no source" in text


def test_a_replay_request_defaults_to_sending():
    request = ReplayRequest(partition=0, from_offset=0, to_offset=0)
    assert request.dry_run is False and request.reason_contains is None


@pytest.fixture
async def cut_short(monkeypatch):
    """A tool whose broker goes away after the first record of a range: (the tool, what it
    sent, that record, the original headers)."""
    first, original = await dead_lettered(LabelObserved(model_name="m", prediction_id="a", label=1))
    sent = []

    class Producer:
        async def send(self, topic, value, key=None, headers=None):
            sent.append((topic, value, key, headers))
            future = asyncio.get_running_loop().create_future()
            future.set_result(SimpleNamespace(partition=2, offset=100 + len(sent)))
            return future

    @contextlib.asynccontextmanager
    async def consumer():
        yield None

    @contextlib.asynccontextmanager
    async def producer(dry_run):
        yield None if dry_run else Producer()

    async def offsets(consumer, topics, must_exist=False):
        return {DLQ: {1: (0, 10)}}

    async def read(consumer, ranges):
        assert ranges == {TopicPartition(DLQ, 1): (7, 10)}
        yield first
        raise dlq.BrokerUnavailable("the broker went away")

    tool = DeadLetters(NOWHERE)
    for name, fake in {
        "_consumer": consumer,
        "_producer": producer,
        "_offsets": offsets,
        "_read": read,
    }.items():
        monkeypatch.setattr(tool, name, fake)
    return tool, sent, first, original


async def test_a_replay_cut_short_reports_what_it_sent_and_why_it_stopped(cut_short):
    tool, sent, first, original = cut_short
    result = await tool.replay(DLQ, ReplayRequest(partition=1, from_offset=7, to_offset=9))
    assert result.stopped == "BrokerUnavailable: the broker went away"
    assert [(r.offset, r.new_partition, r.new_offset) for r in result.replayed] == [(7, 2, 101)]
    assert result.read == 1 and not result.failed and not result.refused
    [(topic, value, key, headers)] = sent
    assert (topic, value, key) == (TOPIC, first.value, first.key)
    assert headers[: len(original)] == original
    assert headers[len(original)] == (dlq.REPLAYED_FROM, first.origin.encode())


def test_the_cli_exits_1_when_a_replay_stopped_early(cut_short, capsys):
    tool, sent, _, _ = cut_short
    command = ["replay", DLQ, "--partition", "1", "--from", "7", "--to", "9"]
    with structlog.testing.capture_logs() as logs:  # the CLI logs on stderr, tests on stdout
        assert dlq.main(command, tool=tool) == 1
        assert "stopped before the end of the range: BrokerUnavailable" in capsys.readouterr().out
        assert dlq.main([*command, "--dry-run", "--json"], tool=tool) == 1
        answer = json.loads(capsys.readouterr().out)
    assert [log["dry_run"] for log in logs if log["event"] == "dlq.replayed"] == [False, True]
    assert answer["dry_run"] and answer["replayed"][0]["new_offset"] is None
    assert len(sent) == 1  # the dry run sent nothing


@pytest.mark.parametrize(
    ("argv", "json_out"),
    [(["--json", "list"], True), (["list", "--json"], True), (["list"], False)],
)
def test_json_may_come_before_or_after_the_command(argv, json_out):
    assert dlq.parser().parse_args(argv).json is json_out
