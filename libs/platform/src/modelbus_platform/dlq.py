"""The dead-letter tool: list, inspect and replay what the bus dead-lettered (CLI and API).

The bus puts a message it could not process on ``<topic>.dlq`` with its original key, value and
headers plus the ``x-dlq-*`` headers (``modelbus_platform.bus``: why, where it came from, which
group and service gave up, when). This module reads those topics with a short-lived consumer
that belongs to no group (partitions assigned explicitly, nothing committed, so reading changes
no one's offsets) and republishes a range of them to their source topic:

- ``list``: every modelbus DLQ topic on the broker: its partitions and record counts (from the
  offsets), the oldest and newest ``x-dlq-at`` and the counts by reason kind (``contract``,
  ``signature``, ``handler``: the reason's prefix) over the newest records, at most
  ``MAX_RECORDS`` read per call in all (``scanned`` says how many were).
- ``inspect``: records of one DLQ topic (an offset range of a partition, or the newest ones):
  offset, the ``x-dlq-*`` headers, the CloudEvents type, id and subject, the value's size and a
  preview of its first ``PREVIEW_BYTES`` bytes; at most ``INSPECT_MAX`` records per call.
- ``replay``: a partition's offset range (at most ``MAX_RECORDS`` records), optionally only the
  records whose reason contains a text or with one event id, republished to the topic named in
  ``x-dlq-source-topic`` with the same key, value and original headers (the ``x-dlq-*`` ones
  dropped) plus ``x-replayed-from: <dlq topic>/<partition>/<offset>`` and ``x-replayed-at``.
  A record without a source topic, or whose source is not a modelbus topic or not the topic
  this DLQ belongs to, is refused (listed with the reason, never sent). ``dry_run`` only counts.

Replaying is safe because consumers are idempotent on ``event_id`` (the ``ProcessedEvents``
ledger of each consumer group, or idempotent handlers): an event that was handled after all is
skipped as a duplicate, one that was not is handled now; one that breaks the contract is
dead-lettered again.

``python -m modelbus_platform.dlq list | inspect TOPIC | replay TOPIC ...`` (``--json`` for JSON)
reads the services' ``MODELBUS_*`` settings for the broker and its security; the registry serves
the same as ``/admin/dlq`` (admin role when auth is on).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, OffsetOutOfRangeError
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from modelbus_contracts import ALL_EVENTS

from .bus import (
    BULK_BATCH_BYTES,
    DLQ_AT,
    DLQ_HEADER_PREFIX,
    DLQ_REASON,
    DLQ_SOURCE_TOPIC,
    DLQ_SUFFIX,
    dlq_topic,
)
from .http import ApiError, error_responses
from .kafka_security import KafkaSecurity

log = structlog.get_logger(__name__)

MAX_RECORDS = 10_000  # records one list or replay call reads at most
INSPECT_MAX = 1_000  # records one inspect call answers at most
PREVIEW_BYTES = 512  # of a record's value shown by inspect
OFFSET_MAX = 2**63 - 1  # Kafka offsets are int64

REPLAYED_FROM = "x-replayed-from"  # <dlq topic>/<partition>/<offset> of the record replayed
REPLAYED_AT = "x-replayed-at"  # when, ISO 8601 UTC
CE_TYPE, CE_ID, CE_SUBJECT = "ce_type", "ce_id", "ce_subject"

SOURCE_TOPICS = frozenset(cls.topic for cls in ALL_EVENTS)
DLQ_TOPICS = frozenset(dlq_topic(topic) for topic in SOURCE_TOPICS)
_REASON_KIND = re.compile(r"([a-z_]+):")


# -- errors ------------------------------------------------------------------------------------


class DlqError(Exception):
    """A request the tool cannot serve; ``reason`` is its short code (the API's ``reason``)."""

    reason = "dlq_error"


class UnknownTopic(DlqError):
    reason = "unknown_topic"


class UnknownPartition(DlqError):
    reason = "unknown_partition"


class BadRange(DlqError):
    reason = "bad_range"


class RangeTooLarge(DlqError):
    reason = "range_too_large"


class OffsetsOutOfRange(DlqError):
    reason = "offsets_out_of_range"


class BrokerUnavailable(DlqError):
    reason = "broker_unavailable"


# -- the pure parts ----------------------------------------------------------------------------


def resolve_topic(name: str) -> str:
    """The DLQ topic ``name`` means: a modelbus DLQ topic, or the source topic of one."""
    if name in DLQ_TOPICS:
        return name
    if name in SOURCE_TOPICS:
        return dlq_topic(name)
    raise UnknownTopic(f"{name!r} is neither a modelbus topic nor its {DLQ_SUFFIX} topic")


def reason_kind(reason: str | None) -> str:
    """``contract``, ``signature``, ``handler``...: the word before the reason's first colon
    (``other`` when it has none, ``none`` without a reason)."""
    if not reason:
        return "none"
    match = _REASON_KIND.match(reason)
    return match.group(1) if match else "other"


def text(value: bytes | None) -> str:
    return (value or b"").decode("utf-8", "replace")


@dataclass(frozen=True)
class DeadLetter:
    """One record of a DLQ topic, as read."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]

    @classmethod
    def of(cls, record: Any) -> DeadLetter:
        """From an aiokafka ``ConsumerRecord``."""
        headers = tuple((name, value or b"") for name, value in record.headers or ())
        return cls(
            record.topic,
            record.partition,
            record.offset,
            record.timestamp,
            record.key,
            record.value or b"",
            headers,
        )

    def header(self, name: str) -> str | None:
        """The last value of header ``name`` (as Kafka clients read a repeated header)."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return None if found is None else text(found)

    @property
    def dlq_headers(self) -> dict[str, str]:
        return {k: text(v) for k, v in self.headers if k.startswith(DLQ_HEADER_PREFIX)}

    @property
    def reason(self) -> str | None:
        return self.header(DLQ_REASON)

    @property
    def source_topic(self) -> str | None:
        return self.header(DLQ_SOURCE_TOPIC) or None

    @property
    def event_id(self) -> str | None:
        return self.header(CE_ID)

    @property
    def dead_lettered_at(self) -> datetime | None:
        raw = self.header(DLQ_AT)
        try:
            moment = datetime.fromisoformat(raw) if raw else None
        except ValueError:
            return None
        if moment is not None and moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment

    @property
    def origin(self) -> str:
        """``<dlq topic>/<partition>/<offset>``: what ``x-replayed-from`` names."""
        return f"{self.topic}/{self.partition}/{self.offset}"


def refusal(letter: DeadLetter) -> str | None:
    """Why ``letter`` must not be replayed, or None: it names no source topic, or one that is
    not a modelbus topic, or one whose DLQ is not the topic it was found in."""
    source = letter.source_topic
    if source is None:
        return f"no {DLQ_SOURCE_TOPIC} header"
    if source not in SOURCE_TOPICS:
        return f"its source topic {source!r} is not a modelbus topic"
    if dlq_topic(source) != letter.topic:
        return f"its source topic {source} does not dead-letter to {letter.topic}"
    return None


def matches(
    letter: DeadLetter, reason_contains: str | None = None, event_id: str | uuid.UUID | None = None
) -> bool:
    """Whether ``letter`` is selected: its reason contains ``reason_contains`` (ignoring case)
    and its ``ce_id`` is ``event_id`` (each only when given)."""
    if reason_contains and reason_contains.casefold() not in (letter.reason or "").casefold():
        return False
    if event_id is not None:
        return (letter.event_id or "").strip().lower() == str(event_id).strip().lower()
    return True


def replay_headers(letter: DeadLetter, at: datetime) -> list[tuple[str, bytes]]:
    """The headers a replayed record carries: its original ones without the ``x-dlq-*`` (and
    without the ``x-replayed-*`` of an earlier replay), plus where and when it was replayed."""
    kept = [
        (name, value)
        for name, value in letter.headers
        if not name.startswith(DLQ_HEADER_PREFIX) and name not in (REPLAYED_FROM, REPLAYED_AT)
    ]
    return [*kept, (REPLAYED_FROM, letter.origin.encode()), (REPLAYED_AT, at.isoformat().encode())]


def preview(value: bytes, limit: int = PREVIEW_BYTES) -> tuple[str, bool]:
    """The value's first ``limit`` bytes as text, and whether there was more."""
    return text(value[:limit]), len(value) > limit


# offsets of a partition: (first offset held, next offset to be written)
Offsets = Mapping[int, tuple[int, int]]


def allocate(counts: Sequence[int], budget: int) -> list[int]:
    """How many of each partition's newest records to read so that at most ``budget`` are read
    in all: an equal share each, what a small partition leaves over shared by the others."""
    share = [0] * len(counts)
    left = budget
    open_ = [i for i, count in enumerate(counts) if count > 0]
    while open_ and left > 0:
        each = max(1, left // len(open_))
        still = []
        for i in open_:
            take = min(each, counts[i] - share[i], left)
            share[i] += take
            left -= take
            if share[i] < counts[i]:
                still.append(i)
            if left == 0:
                break
        open_ = still
    return share


def _partition_offsets(offsets: Offsets, partition: int) -> tuple[int, int]:
    if partition not in offsets:
        raise UnknownPartition(f"no partition {partition} (partitions: {sorted(offsets)})")
    return offsets[partition]


def _held(partition: int, first: int, end: int) -> str:
    if first >= end:
        return f"partition {partition} holds no records"
    return f"partition {partition} holds offsets {first}..{end - 1}"


def inspect_ranges(
    offsets: Offsets,
    *,
    partition: int | None = None,
    from_offset: int | None = None,
    to_offset: int | None = None,
    limit: int = 20,
) -> dict[int, tuple[int, int]]:
    """The offsets ``inspect`` reads, per partition: ``[start, stop)``. With neither offset,
    the newest ``limit`` of each partition (``partition``: only that one); with ``from_offset``
    the first ``limit`` records from it (up to ``to_offset``); with only ``to_offset`` the
    ``limit`` records up to it. Offsets need a partition and must be records it holds."""
    if not 1 <= limit <= INSPECT_MAX:
        raise RangeTooLarge(f"limit {limit}: inspect answers 1 to {INSPECT_MAX} records")
    if partition is None:
        if from_offset is not None or to_offset is not None:
            raise BadRange("from_offset and to_offset need a partition")
        return {p: (max(first, end - limit), end) for p, (first, end) in offsets.items()}
    first, end = _partition_offsets(offsets, partition)
    if from_offset is not None and to_offset is not None and from_offset > to_offset:
        raise BadRange(f"from_offset {from_offset} is after to_offset {to_offset}")
    for offset in (from_offset, to_offset):
        if offset is not None and not first <= offset < end:
            raise OffsetsOutOfRange(f"offset {offset}: {_held(partition, first, end)}")
    if from_offset is not None:
        stop = end if to_offset is None else to_offset + 1
        return {partition: (from_offset, min(stop, from_offset + limit))}
    if to_offset is not None:
        return {partition: (max(first, to_offset + 1 - limit), to_offset + 1)}
    return {partition: (max(first, end - limit), end)}


def check_replay_range(from_offset: int, to_offset: int, max_records: int = MAX_RECORDS) -> None:
    """What is wrong with a replay range before the broker is asked (inclusive offsets)."""
    if from_offset > to_offset:
        raise BadRange(f"from_offset {from_offset} is after to_offset {to_offset}")
    if to_offset - from_offset + 1 > max_records:
        raise RangeTooLarge(
            f"{to_offset - from_offset + 1} records: one replay takes at most {max_records}"
        )


def replay_range(
    offsets: Offsets, partition: int, from_offset: int, to_offset: int, max_records: int
) -> tuple[int, int]:
    """``[start, stop)`` of a replay of ``from_offset..to_offset`` (inclusive) of a partition:
    the records must all be held, and at most ``max_records`` of them."""
    check_replay_range(from_offset, to_offset, max_records)
    first, end = _partition_offsets(offsets, partition)
    if from_offset < first or to_offset >= end:
        raise OffsetsOutOfRange(
            f"offsets {from_offset}..{to_offset}: {_held(partition, first, end)}"
        )
    return from_offset, to_offset + 1


# -- what the tool answers ---------------------------------------------------------------------


class PartitionSummary(BaseModel):
    partition: int
    first_offset: int = Field(description="the oldest offset the partition still holds")
    next_offset: int = Field(description="the offset the next record will get")
    count: int


class TopicSummary(BaseModel):
    topic: str
    source_topic: str
    count: int = Field(description="records held, from the offsets")
    partitions: list[PartitionSummary]
    scanned: int = Field(description="the newest records read for what follows")
    oldest_at: datetime | None = Field(description="the oldest x-dlq-at of those read")
    newest_at: datetime | None = Field(description="the newest x-dlq-at of those read")
    reasons: dict[str, int] = Field(
        description="records read by reason kind: the x-dlq-reason's prefix (contract, "
        "signature, handler, ...)"
    )


class DlqList(BaseModel):
    topics: list[TopicSummary] = Field(description="every modelbus DLQ topic on the broker")
    scan_limit: int = Field(description="records one list reads at most, over all topics")
    complete: bool = Field(description="false when some topic has more records than were read")


class DeadLetterView(BaseModel):
    topic: str
    partition: int
    offset: int
    timestamp: datetime | None = Field(description="the DLQ record's Kafka timestamp")
    key: str | None
    reason: str | None
    reason_kind: str
    source_topic: str | None
    dlq_headers: dict[str, str] = Field(description="every x-dlq-* header")
    dead_lettered_at: datetime | None = Field(description="x-dlq-at")
    event_type: str | None = Field(description="ce_type")
    event_id: str | None = Field(description="ce_id")
    subject: str | None = Field(description="ce_subject (the model name)")
    value_bytes: int
    preview: str = Field(description=f"the value's first {PREVIEW_BYTES} bytes, as UTF-8")
    preview_truncated: bool
    replayable: bool
    refusal: str | None = Field(description="why a replay would refuse it")


class DlqPage(BaseModel):
    topic: str
    records: list[DeadLetterView]
    next_offset: int | None = Field(
        description="with a partition: the offset after the last record answered (page on "
        "with from_offset=next_offset)"
    )


class ReplayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt filter must not replay everything

    partition: int = Field(ge=0, le=2**31 - 1)
    from_offset: int = Field(ge=0, le=OFFSET_MAX, description="first offset (inclusive)")
    to_offset: int = Field(ge=0, le=OFFSET_MAX, description="last offset (inclusive)")
    reason_contains: str | None = Field(
        default=None, max_length=500, description="only records whose reason contains it"
    )
    event_id: uuid.UUID | None = Field(default=None, description="only the record(s) of it")
    dry_run: bool = Field(default=False, description="count what would be replayed, send none")


class ReplayedRecord(BaseModel):
    offset: int = Field(description="in the DLQ partition")
    source_topic: str
    event_id: str | None
    event_type: str | None
    new_partition: int | None = Field(description="where it was written (none in a dry run)")
    new_offset: int | None


class RefusedRecord(BaseModel):
    offset: int
    event_id: str | None
    why: str


class ReplayResult(BaseModel):
    topic: str
    partition: int
    from_offset: int
    to_offset: int
    dry_run: bool
    read: int = Field(description="records read in the range")
    skipped: int = Field(description="records the filters left out")
    replayed: list[ReplayedRecord] = Field(description="replayed (would be, in a dry run)")
    refused: list[RefusedRecord] = Field(description="selected but not replayable")
    failed: list[RefusedRecord] = Field(description="sent but not acknowledged by the broker")
    stopped: str | None = Field(
        default=None,
        description="why the replay stopped before the end of the range (the lists above say "
        "what was done until then)",
    )


def view(letter: DeadLetter) -> DeadLetterView:
    shown, truncated = preview(letter.value)
    why = refusal(letter)
    moment = letter.timestamp_ms
    key = text(letter.key)[:200] if letter.key is not None else None
    return DeadLetterView(
        topic=letter.topic,
        partition=letter.partition,
        offset=letter.offset,
        timestamp=datetime.fromtimestamp(moment / 1000, UTC) if moment is not None else None,
        key=key,
        reason=letter.reason,
        reason_kind=reason_kind(letter.reason),
        source_topic=letter.source_topic,
        dlq_headers=letter.dlq_headers,
        dead_lettered_at=letter.dead_lettered_at,
        event_type=letter.header(CE_TYPE),
        event_id=letter.event_id,
        subject=letter.header(CE_SUBJECT),
        value_bytes=len(letter.value),
        preview=shown,
        preview_truncated=truncated,
        replayable=why is None,
        refusal=why,
    )


# -- the tool ----------------------------------------------------------------------------------


class DeadLetters:
    """The DLQ topics of one broker. Nothing connects until a call; each call makes its own
    short-lived consumer (and producer, to replay), at most ``concurrency`` calls at a time."""

    def __init__(
        self,
        bootstrap: str,
        *,
        security: KafkaSecurity | None = None,
        client_id: str = "modelbus-dlq",
        max_records: int = MAX_RECORDS,
        stall_timeout_s: float = 30.0,
        concurrency: int = 2,
    ) -> None:
        self.bootstrap = bootstrap
        self.security = security or KafkaSecurity()
        self.client_id = client_id
        self.max_records = max_records
        self.stall_timeout_s = stall_timeout_s
        self._calls = asyncio.Semaphore(concurrency)

    @classmethod
    def from_settings(cls, settings: Any) -> DeadLetters:
        return cls(
            settings.kafka_bootstrap,
            security=KafkaSecurity.from_settings(settings),
            client_id=f"modelbus-{settings.service_name}-dlq",
        )

    # -- calls ---------------------------------------------------------------------------------

    async def list(self) -> DlqList:
        async with self._consumer() as consumer:
            on_broker = sorted(DLQ_TOPICS & set(await consumer.topics()))
            offsets = await self._offsets(consumer, on_broker)
            pairs = [(t, p) for t in on_broker for p in sorted(offsets[t])]
            counts = [offsets[t][p][1] - offsets[t][p][0] for t, p in pairs]
            shares = allocate(counts, self.max_records)
            ranges = {
                TopicPartition(t, p): (offsets[t][p][1] - share, offsets[t][p][1])
                for (t, p), share in zip(pairs, shares, strict=True)
                if share
            }
            tallies = {t: _Tally() for t in on_broker}
            async for letter in self._read(consumer, ranges):
                tallies[letter.topic].add(letter)
        topics = [tallies[t].summary(t, offsets[t]) for t in on_broker]
        return DlqList(
            topics=topics,
            scan_limit=self.max_records,
            complete=all(summary.scanned == summary.count for summary in topics),
        )

    async def inspect(
        self,
        topic: str,
        *,
        partition: int | None = None,
        from_offset: int | None = None,
        to_offset: int | None = None,
        limit: int = 20,
    ) -> DlqPage:
        topic = resolve_topic(topic)
        async with self._consumer() as consumer:
            offsets = (await self._offsets(consumer, [topic], must_exist=True))[topic]
            ranges = inspect_ranges(
                offsets,
                partition=partition,
                from_offset=from_offset,
                to_offset=to_offset,
                limit=limit,
            )
            tps = {TopicPartition(topic, p): r for p, r in ranges.items()}
            letters = [view(letter) async for letter in self._read(consumer, tps)]
        if partition is None:  # the newest ``limit`` of all partitions, oldest first
            newest = sorted(letters, key=lambda v: v.timestamp or datetime.min.replace(tzinfo=UTC))
            letters = newest[-limit:]
            next_offset = None
        else:
            next_offset = ranges[partition][1]
        return DlqPage(topic=topic, records=letters, next_offset=next_offset)

    async def replay(self, topic: str, request: ReplayRequest) -> ReplayResult:
        topic = resolve_topic(topic)
        check_replay_range(request.from_offset, request.to_offset, self.max_records)
        result = ReplayResult(
            topic=topic,
            partition=request.partition,
            from_offset=request.from_offset,
            to_offset=request.to_offset,
            dry_run=request.dry_run,
            read=0,
            skipped=0,
            replayed=[],
            refused=[],
            failed=[],
        )
        async with self._consumer() as consumer, self._producer(request.dry_run) as producer:
            offsets = (await self._offsets(consumer, [topic], must_exist=True))[topic]
            span = replay_range(
                offsets,
                request.partition,
                request.from_offset,
                request.to_offset,
                self.max_records,
            )
            sent: list[tuple[ReplayedRecord, asyncio.Future[Any]]] = []
            at = datetime.now(UTC)
            try:
                async for letter in self._read(
                    consumer, {TopicPartition(topic, request.partition): span}
                ):
                    result.read += 1
                    if not matches(letter, request.reason_contains, request.event_id):
                        result.skipped += 1
                        continue
                    why = refusal(letter)
                    if why is not None:
                        result.refused.append(
                            RefusedRecord(offset=letter.offset, event_id=letter.event_id, why=why)
                        )
                    elif producer is None:
                        result.replayed.append(_replayed(letter))
                    else:
                        sent.append((_replayed(letter), await _send(producer, letter, at)))
            except (DlqError, KafkaError) as exc:  # what was sent is reported all the same
                result.stopped = f"{type(exc).__name__}: {exc}"
            outcomes = await asyncio.gather(*(f for _, f in sent), return_exceptions=True)
        for (done, _), outcome in zip(sent, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                why = f"{type(outcome).__name__}: {outcome}"
                result.failed.append(
                    RefusedRecord(offset=done.offset, event_id=done.event_id, why=why)
                )
            else:
                result.replayed.append(
                    done.model_copy(
                        update={"new_partition": outcome.partition, "new_offset": outcome.offset}
                    )
                )
        log.info(
            "dlq.replayed",
            topic=topic,
            partition=request.partition,
            from_offset=request.from_offset,
            to_offset=request.to_offset,
            dry_run=request.dry_run,
            replayed=len(result.replayed),
            refused=len(result.refused),
            failed=len(result.failed),
            stopped=result.stopped,
        )
        return result

    # -- Kafka ---------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _consumer(self) -> AsyncIterator[AIOKafkaConsumer]:
        async with self._calls:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                client_id=self.client_id,
                group_id=None,  # no group: nothing joined, nothing committed
                enable_auto_commit=False,
                auto_offset_reset="none",  # an offset gone since it was checked: an error
                fetch_max_wait_ms=100,
                **self.security.client_options(),
            )
            try:
                await consumer.start()
            except KafkaError as exc:
                await consumer.stop()
                raise BrokerUnavailable(f"the broker at {self.bootstrap}: {exc}") from exc
            try:
                yield consumer
            except OffsetOutOfRangeError as exc:
                raise OffsetsOutOfRange(f"records went while they were read: {exc}") from exc
            except KafkaError as exc:
                raise BrokerUnavailable(f"the broker at {self.bootstrap}: {exc}") from exc
            finally:
                await consumer.stop()

    @contextlib.asynccontextmanager
    async def _producer(self, dry_run: bool) -> AsyncIterator[AIOKafkaProducer | None]:
        if dry_run:
            yield None
            return
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id=self.client_id,
            acks="all",
            max_request_size=BULK_BATCH_BYTES + 65_536,
            **self.security.client_options(),
        )
        try:
            await producer.start()
        except KafkaError as exc:
            await producer.stop()
            raise BrokerUnavailable(f"the broker at {self.bootstrap}: {exc}") from exc
        try:
            yield producer
        finally:
            await producer.stop()

    async def _offsets(
        self, consumer: AIOKafkaConsumer, topics: Sequence[str], *, must_exist: bool = False
    ) -> dict[str, dict[int, tuple[int, int]]]:
        """Each topic's partitions with their (first, next) offsets."""
        if must_exist:
            existing = await consumer.topics()
            for topic in topics:
                if topic not in existing:
                    raise UnknownTopic(f"{topic} does not exist on the broker")
        tps = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        offsets: dict[str, dict[int, tuple[int, int]]] = {topic: {} for topic in topics}
        if tps:
            first = await consumer.beginning_offsets(tps)
            end = await self._high_watermarks(consumer, await consumer.end_offsets(tps))
            for tp in tps:
                offsets[tp.topic][tp.partition] = (first[tp], end[tp])
        return offsets

    async def _high_watermarks(
        self, consumer: AIOKafkaConsumer, listed: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, int]:
        """The end offsets, raised to the high watermark a fetch from there reports. Kafka's
        ListOffsets answer is the high watermark already; the embedded broker's (tansu) is the
        last batch's base offset + 1, short of the batch's other records."""
        consumer.assign(list(listed))
        for tp, offset in listed.items():
            consumer.seek(tp, offset)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.stall_timeout_s
        while any(consumer.highwater(tp) is None for tp in listed):
            if loop.time() > deadline:
                raise BrokerUnavailable(f"no fetch answered in {self.stall_timeout_s:g} s")
            await consumer.getmany(timeout_ms=100, max_records=1)
        return {tp: max(offset, consumer.highwater(tp) or 0) for tp, offset in listed.items()}

    async def _read(
        self, consumer: AIOKafkaConsumer, ranges: Mapping[TopicPartition, tuple[int, int]]
    ) -> AsyncIterator[DeadLetter]:
        """The records of each ``[start, stop)``, in offset order per partition; raises
        ``BrokerUnavailable`` when nothing comes for ``stall_timeout_s``."""
        pending = {tp: stop for tp, (start, stop) in ranges.items() if stop > start}
        if not pending:
            return
        consumer.assign(list(pending))
        for tp in pending:
            consumer.seek(tp, ranges[tp][0])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.stall_timeout_s
        while pending:
            if loop.time() > deadline:
                raise BrokerUnavailable(
                    f"no records came for {self.stall_timeout_s:g} s from "
                    + ", ".join(f"{tp.topic}/{tp.partition}" for tp in pending)
                )
            batches = await consumer.getmany(*pending, timeout_ms=500, max_records=500)
            for tp, records in batches.items():
                if records:
                    deadline = loop.time() + self.stall_timeout_s
                for record in records:
                    if record.offset < pending[tp]:
                        yield DeadLetter.of(record)
            for tp in list(pending):
                if await consumer.position(tp) >= pending[tp]:
                    del pending[tp]


async def _send(
    producer: AIOKafkaProducer, letter: DeadLetter, at: datetime
) -> asyncio.Future[Any]:
    """``letter`` sent to its source topic: the future of its acknowledgement (failed at once
    if the producer refused it, e.g. too large: the other records go on)."""
    try:
        return await producer.send(
            str(letter.source_topic),
            letter.value,
            key=letter.key,
            headers=replay_headers(letter, at),
        )
    except KafkaError as exc:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_exception(exc)
        return future


def _replayed(letter: DeadLetter) -> ReplayedRecord:
    return ReplayedRecord(
        offset=letter.offset,
        source_topic=letter.source_topic or "",
        event_id=letter.event_id,
        event_type=letter.header(CE_TYPE),
        new_partition=None,
        new_offset=None,
    )


@dataclass
class _Tally:
    """What ``list`` keeps of the records it reads: counts and times, not the records."""

    scanned: int = 0
    oldest: datetime | None = None
    newest: datetime | None = None
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, letter: DeadLetter) -> None:
        self.scanned += 1
        kind = reason_kind(letter.reason)
        self.reasons[kind] = self.reasons.get(kind, 0) + 1
        moment = letter.dead_lettered_at
        if moment is not None:
            self.oldest = moment if self.oldest is None else min(self.oldest, moment)
            self.newest = moment if self.newest is None else max(self.newest, moment)

    def summary(self, topic: str, offsets: Offsets) -> TopicSummary:
        partitions = [
            PartitionSummary(partition=p, first_offset=first, next_offset=end, count=end - first)
            for p, (first, end) in sorted(offsets.items())
        ]
        return TopicSummary(
            topic=topic,
            source_topic=topic.removesuffix(DLQ_SUFFIX),
            count=sum(p.count for p in partitions),
            partitions=partitions,
            scanned=self.scanned,
            oldest_at=self.oldest,
            newest_at=self.newest,
            reasons=dict(sorted(self.reasons.items())),
        )


# -- the HTTP API (the registry serves it) -----------------------------------------------------

STATUS = {
    UnknownTopic: 404,
    UnknownPartition: 404,
    BadRange: 422,
    RangeTooLarge: 422,
    OffsetsOutOfRange: 422,
    BrokerUnavailable: 503,
}
UNAVAILABLE = {503: "broker_unavailable: the broker did not answer (or stopped sending records)"}
BAD_INPUT = {
    404: "unknown_topic (not a modelbus topic or DLQ topic, or not on the broker) or "
    "unknown_partition",
    422: "bad_range, range_too_large or offsets_out_of_range (the offsets the partition holds "
    "are in the message), or parameters not as documented",
    **UNAVAILABLE,
}
TOPIC_DOC = "a DLQ topic (label.observed.v1.dlq) or its source topic (label.observed.v1)"


def _api_error(exc: DlqError) -> ApiError:
    return ApiError(STATUS.get(type(exc), 422), str(exc), exc.reason)


def dlq_router(tool: DeadLetters) -> APIRouter:
    """``/admin/dlq``: list the DLQ topics, inspect one, replay a range of it (admin role when
    auth is on: every ``/admin`` route is)."""
    router = APIRouter(prefix="/admin/dlq", tags=["admin"])

    @router.get(
        "",
        response_model=DlqList,
        summary="Dead-letter topics: counts, partitions, reasons",
        responses=error_responses(UNAVAILABLE),
    )
    async def listed() -> DlqList:
        try:
            return await tool.list()
        except DlqError as exc:
            raise _api_error(exc) from exc

    @router.get(
        "/{topic}",
        response_model=DlqPage,
        summary="Dead-lettered records: headers, event ids, a preview of each value",
        description=f"``topic``: {TOPIC_DOC}.",
        responses=error_responses(BAD_INPUT),
    )
    async def inspected(
        topic: str,
        partition: int | None = Query(None, ge=0, le=2**31 - 1, description="default: all"),
        from_offset: int | None = Query(None, ge=0, le=OFFSET_MAX, description="inclusive"),
        to_offset: int | None = Query(None, ge=0, le=OFFSET_MAX, description="inclusive"),
        limit: int = Query(20, ge=1, le=INSPECT_MAX, description="records answered at most"),
    ) -> DlqPage:
        try:
            return await tool.inspect(
                topic,
                partition=partition,
                from_offset=from_offset,
                to_offset=to_offset,
                limit=limit,
            )
        except DlqError as exc:
            raise _api_error(exc) from exc

    @router.post(
        "/{topic}/replay",
        response_model=ReplayResult,
        summary="Replay a range of dead letters to their source topic (or count it: dry_run)",
        description=f"``topic``: {TOPIC_DOC}. Consumers dedupe on event_id, so replaying an "
        "event that was handled after all changes nothing.",
        responses=error_responses(BAD_INPUT),
    )
    async def replayed(topic: str, body: ReplayRequest, request: Request) -> ReplayResult:
        identity = getattr(request.state, "identity", None)
        try:
            result = await tool.replay(topic, body)
        except DlqError as exc:
            raise _api_error(exc) from exc
        log.info(
            "dlq.replay_requested",
            actor=identity.name if identity is not None else None,
            topic=result.topic,
            partition=body.partition,
            from_offset=body.from_offset,
            to_offset=body.to_offset,
            dry_run=body.dry_run,
            replayed=len(result.replayed),
        )
        return result

    return router


# -- the CLI -----------------------------------------------------------------------------------


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment is not None else "-"


def _short(value: str | None, width: int) -> str:
    value = (value or "-").replace("\n", " ")
    return value if len(value) <= width else value[: width - 1] + "…"


def format_list(answer: DlqList, *, every: bool = False) -> str:
    topics = [t for t in answer.topics if every or t.count]
    if not topics:
        return "no dead letters" + ("" if every else " (--all lists the empty DLQ topics too)")
    rows = [
        [
            t.topic,
            str(t.count),
            " ".join(f"{p.partition}:{p.count}" for p in t.partitions),
            _when(t.oldest_at),
            _when(t.newest_at),
            " ".join(f"{kind}={n}" for kind, n in t.reasons.items()) or "-",
        ]
        for t in topics
    ]
    out = _table(rows, ["TOPIC", "RECORDS", "PARTITIONS", "OLDEST", "NEWEST", "REASONS"])
    if not answer.complete:
        out += f"\n(times and reasons cover the newest {answer.scan_limit} records read)"
    return out


def format_page(page: DlqPage, *, previews: bool = False) -> str:
    if not page.records:
        return f"{page.topic}: no records there"
    rows = [
        [
            str(r.partition),
            str(r.offset),
            _when(r.dead_lettered_at),
            _short(r.reason, 60),
            _short(r.event_type, 28),
            r.event_id or "-",
            _short(r.subject, 24),
            str(r.value_bytes),
            "yes" if r.replayable else "no",
        ]
        for r in page.records
    ]
    header = ["P", "OFFSET", "DEAD-LETTERED", "REASON", "TYPE", "EVENT ID", "SUBJECT", "BYTES"]
    out = _table(rows, [*header, "REPLAYABLE"])
    if previews:
        for r in page.records:
            more = " …" if r.preview_truncated else ""
            out += f"\n\n{r.partition}/{r.offset} {r.reason or ''}\n  {r.preview}{more}"
    if page.next_offset is not None:
        out += f"\nnext: --from {page.next_offset}"
    return out


def format_replay(result: ReplayResult) -> str:
    verb = "would replay" if result.dry_run else "replayed"
    lines = [
        f"{result.topic}/{result.partition} offsets {result.from_offset}..{result.to_offset}: "
        f"read {result.read}, {verb} {len(result.replayed)}, skipped {result.skipped} "
        f"(filters), refused {len(result.refused)}, failed {len(result.failed)}"
    ]
    for r in result.replayed:
        where = (
            "" if r.new_offset is None else f" -> {r.source_topic}/{r.new_partition}/{r.new_offset}"
        )
        lines.append(f"  {verb} {r.offset} {r.event_type or '-'} {r.event_id or '-'}{where}")
    for kind, records in (("refused", result.refused), ("failed", result.failed)):
        lines.extend(f"  {kind} {r.offset} {r.event_id or '-'}: {r.why}" for r in records)
    if result.stopped:
        lines.append(f"stopped before the end of the range: {result.stopped}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    # --json before or after the command (SUPPRESS: a command's default must not override it)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON")
    top = argparse.ArgumentParser(
        prog="python -m modelbus_platform.dlq",
        description="List, inspect and replay dead letters (the broker and its security from "
        "the MODELBUS_* settings, as the services read them).",
    )
    top.add_argument("--json", action="store_true", help="answer JSON")
    commands = top.add_subparsers(dest="command", required=True)
    listed = commands.add_parser("list", parents=[common], help="the DLQ topics")
    listed.add_argument("--all", action="store_true", help="the empty DLQ topics too")
    inspected = commands.add_parser("inspect", parents=[common], help="records of a DLQ topic")
    inspected.add_argument("topic", help=TOPIC_DOC)
    inspected.add_argument("--partition", type=int)
    inspected.add_argument("--from", dest="from_offset", type=int, help="first offset")
    inspected.add_argument("--to", dest="to_offset", type=int, help="last offset (inclusive)")
    inspected.add_argument("--limit", type=int, default=20, help=f"at most {INSPECT_MAX}")
    inspected.add_argument("--previews", action="store_true", help="show each value's start")
    replayed = commands.add_parser(
        "replay", parents=[common], help="republish a range to its source topic"
    )
    replayed.add_argument("topic", help=TOPIC_DOC)
    replayed.add_argument("--partition", type=int, required=True)
    replayed.add_argument("--from", dest="from_offset", type=int, required=True)
    replayed.add_argument("--to", dest="to_offset", type=int, required=True, help="inclusive")
    replayed.add_argument("--reason-contains", help="only records whose reason contains it")
    replayed.add_argument("--event-id", type=uuid.UUID, help="only this event's record(s)")
    replayed.add_argument("--dry-run", action="store_true", help="count, send nothing")
    return top


async def run_command(tool: DeadLetters, args: argparse.Namespace) -> tuple[BaseModel, str]:
    """(the answer, its table) for parsed ``args``."""
    if args.command == "list":
        answer = await tool.list()
        return answer, format_list(answer, every=args.all)
    if args.command == "inspect":
        page = await tool.inspect(
            args.topic,
            partition=args.partition,
            from_offset=args.from_offset,
            to_offset=args.to_offset,
            limit=args.limit,
        )
        return page, format_page(page, previews=args.previews)
    request = ReplayRequest(
        partition=args.partition,
        from_offset=args.from_offset,
        to_offset=args.to_offset,
        reason_contains=args.reason_contains,
        event_id=args.event_id,
        dry_run=args.dry_run,
    )
    result = await tool.replay(args.topic, request)
    return result, format_replay(result)


def main(argv: list[str] | None = None, tool: DeadLetters | None = None) -> int:
    """Exit status: 0 done, 1 a replay with failed sends or stopped early, 2 bad input, 3 the
    broker unavailable."""
    from pydantic import ValidationError

    from .logging import configure_logging
    from .settings import ServiceSettings

    args = parser().parse_args(argv)
    try:
        if tool is None:
            settings = ServiceSettings()
            configure_logging("dlq", settings.log_level, settings.log_json)  # on stderr
            tool = DeadLetters.from_settings(settings)
        answer, table = asyncio.run(run_command(tool, args))
    except (DlqError, ValidationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3 if isinstance(exc, BrokerUnavailable) else 2
    print(answer.model_dump_json(indent=2) if args.json else table)
    return 1 if isinstance(answer, ReplayResult) and (answer.failed or answer.stopped) else 0


if __name__ == "__main__":
    sys.exit(main())
