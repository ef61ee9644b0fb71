"""The event bus: publish events as CloudEvents, consume them at-least-once with a safety net.

Every subscription names its consumer group. A message is committed only after its handler
succeeded (faststream ``AckPolicy.NACK_ON_ERROR`` with manual commits); handlers are idempotent on
``event_id`` through a ``ProcessedEvents`` store; a message that fails the contract, or whose
handler keeps failing after bounded retries with exponential backoff, goes to ``<topic>.dlq``
with the reason in its headers, and the partition keeps flowing.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any, Protocol, TypeVar

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAlreadyExistsError,
)
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import TopicPartition
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage

from modelbus_contracts import (
    ALL_EVENTS,
    Columns,
    ContractError,
    Event,
    KafkaRecord,
    decode,
    decode_batch,
    encode,
)

from . import signing
from .kafka_security import KafkaSecurity
from .metrics import Metrics
from .offsets import GroupOffsets
from .signing import Signer, Verifier
from .transient import backoff_delay, is_transient

log = structlog.get_logger(__name__)

E = TypeVar("E", bound=Event)
Handler = Callable[[E], Awaitable[None]]
# A pre-encoded Kafka record: key, value, headers (what ``modelbus_contracts`` fast encoders
# build for the high-volume telemetry, so no pydantic model is made per event)
RawRecord = tuple[bytes, bytes, list[tuple[str, bytes]]]
BULK_BATCH_BYTES = 1_000_000  # one Kafka record batch (the broker's default message limit)

DLQ_SUFFIX = ".dlq"
# A dead letter never fails on size: it keeps the headers (each cut to DLQ_HEADER_CHARS, at
# most DLQ_MAX_HEADERS of them) and the reason, and at most DLQ_VALUE_BYTES of the value (the
# original size and SHA-256 in x-dlq-value-bytes / x-dlq-value-sha256): far below any broker's
# message limit, so a message too large for its own topic still has a place to go.
DLQ_VALUE_BYTES = 256_000
DLQ_HEADER_CHARS = 1_000
DLQ_MAX_HEADERS = 64
FETCH_BYTES = 16 * 1024 * 1024  # per partition and fetch: what a consumer can read at all
WAIT_LOG_INTERVAL_S = 30.0  # a consumer waiting for a dependency logs once per interval
LOG_REASON_CHARS = 1_000  # what a log line keeps of a reason (a huge one must not flood logs)
# what a broker (or the client's own check) answers a record it will never take: retrying it
# cannot help; anything else (no connection, a timeout, no leader) is worth a redelivery
TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)
# the headers a dead-lettered record carries beside its original ones (``modelbus_platform.dlq``
# reads them, and drops every header with the prefix when it replays the record)
DLQ_HEADER_PREFIX = "x-dlq-"
DLQ_REASON = DLQ_HEADER_PREFIX + "reason"  # "<kind>: <why>" (kind: contract, signature, handler)
DLQ_SOURCE_TOPIC = DLQ_HEADER_PREFIX + "source-topic"
DLQ_PARTITION = DLQ_HEADER_PREFIX + "partition"  # of the source topic
DLQ_OFFSET = DLQ_HEADER_PREFIX + "offset"  # in the source partition
DLQ_GROUP = DLQ_HEADER_PREFIX + "group"
DLQ_SERVICE = DLQ_HEADER_PREFIX + "service"
DLQ_ATTEMPTS = DLQ_HEADER_PREFIX + "attempts"  # handler calls made (0: never handled)
DLQ_AT = DLQ_HEADER_PREFIX + "at"  # when, ISO 8601 UTC
DLQ_VALUE_SIZE = DLQ_HEADER_PREFIX + "value-bytes"  # a value cut down: its original size
DLQ_VALUE_SHA256 = DLQ_HEADER_PREFIX + "value-sha256"  # ... and its SHA-256
CE_KEPT = ("ce_id", "ce_type")  # what a dead letter sent without its value keeps of the event
_topic_of = attrgetter("topic")


def dlq_topic(topic: str) -> str:
    return topic + DLQ_SUFFIX


def all_topics() -> list[str]:
    topics = [cls.topic for cls in ALL_EVENTS]
    return topics + [dlq_topic(t) for t in topics]


class Publisher(Protocol):
    """What publishes events: the bus, or a test's recording double."""

    async def publish(self, event: Event) -> None: ...

    async def publish_record(self, record: KafkaRecord) -> None:
        """One already encoded event (what the outbox relay sends)."""

    async def publish_many(self, events: list[Event]) -> list[BaseException | None]:
        """Several events pipelined; None or the exception per event, in order."""

    async def publish_records(self, topic: str, records: list[RawRecord]) -> None:
        """Pre-encoded records of one topic, in as few requests as possible; raises unless
        all are acknowledged."""


class UndeclaredEvent(RuntimeError):
    """A service tried to publish an event its spec does not declare."""


class ProcessedEvents(Protocol):
    """Remembers which events a consumer group has fully handled (the idempotency ledger)."""

    async def seen(self, group: str, event_id: uuid.UUID) -> bool: ...

    async def mark(self, group: str, event_id: uuid.UUID) -> None: ...


class MemoryProcessedEvents:
    """The ledger in memory, bounded (the oldest ids are forgotten first): for a stateless
    service whose handlers are idempotent anyway (the scorer re-reads the registry), so the
    ledger only spares repeated work."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._seen: dict[tuple[str, uuid.UUID], None] = {}

    async def seen(self, group: str, event_id: uuid.UUID) -> bool:
        return (group, event_id) in self._seen

    async def mark(self, group: str, event_id: uuid.UUID) -> None:
        self._seen[(group, event_id)] = None
        if len(self._seen) > self.capacity:
            del self._seen[next(iter(self._seen))]


BatchHandler = Callable[[list[E]], Awaitable[None]]
# Decodes a batch of raw records of one topic (the contracts' columnar decoder): returns the
# payload for the handler, the accepted records (in order) and the rejected ones with the reason
BatchDecoder = Callable[[list[Any]], tuple[Any, list[Any], list[tuple[Any, str]]]]


@dataclass(frozen=True)
class _Route:
    event_cls: type[Event]
    handler: Callable[[Any], Awaitable[None]]
    dedupe: bool
    batch: bool = False
    decoder: BatchDecoder | None = None


class EventBus:
    """One Kafka connection per service: a publisher plus the service's subscriptions."""

    def __init__(
        self,
        bootstrap: str,
        *,
        service: str,
        metrics: Metrics,
        processed: ProcessedEvents,
        retries: int = 3,
        backoff_s: float = 0.2,
        backoff_max_s: float = 30.0,
        partitions: int = 3,
        publishes: Iterable[str] | None = None,
        signer: Signer | None = None,
        verifier: Verifier | None = None,
        security: KafkaSecurity | None = None,
        max_event_bytes: int = 1_000_000,
        stall_s: float = 120.0,
        topic_check_s: float = 30.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.max_event_bytes = max_event_bytes
        self.security = security or KafkaSecurity()
        self.signer = signer
        self.verifier = verifier
        self.publishes = frozenset(publishes) if publishes is not None else None
        self.service = service
        self.metrics = metrics
        self.processed = processed
        self.retries = retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        # consumer group -> what it waits for (a dependency that does not answer)
        self.waiting: dict[str, str] = {}
        # consumer group -> why it makes no progress with a backlog (sample_lag)
        self.stalled: dict[str, str] = {}
        self._progress: dict[str, tuple[int, float]] = {}
        self.stall_s = stall_s
        self.topic_check_s = topic_check_s
        self._waiting_logged: dict[str, float] = {}
        self.partitions = partitions
        self.broker = KafkaBroker(
            bootstrap,
            client_id=f"modelbus-{service}",
            logger=None,
            max_request_size=max(max_event_bytes, DLQ_VALUE_BYTES) + 65_536,
            # new partitions (and a broker's lost topics) are seen within 30 s, not 5 min
            metadata_max_age_ms=30_000,
            security=self.security.faststream(),
        )
        self._started = False
        self._groups: dict[str, dict[str, _Route]] = {}
        self._subscribers: dict[str, Any] = {}
        self._lag_task: asyncio.Task | None = None
        self._offset_reset: dict[str, str] = {}
        # checkpointed groups: offsets committed by the service, as far as its state is saved
        self._offsets: dict[str, GroupOffsets] = {}
        self._bulk: AIOKafkaProducer | None = None
        self._partitioner = DefaultPartitioner()
        self._partition_of: dict[tuple[str, bytes], int] = {}

    @classmethod
    def from_settings(
        cls,
        settings: Any,
        *,
        metrics: Metrics,
        processed: ProcessedEvents,
        publishes: Iterable[str] | None = None,
    ) -> EventBus:
        """The bus as every service builds it from its ``ServiceSettings``: its signing key
        signs the control events it publishes, the trusted keys verify those it consumes."""
        key = settings.signing_key.get_secret_value() if settings.signing_key else None
        signer, verifier = signing.from_settings(settings.service_name, key, settings.trusted_keys)
        if verifier is None:
            log.warning(
                "bus.control_events_not_verified",
                why="no MODELBUS_TRUSTED_KEYS: a forged control event would be acted on",
            )
        return cls(
            settings.kafka_bootstrap,
            service=settings.service_name,
            metrics=metrics,
            processed=processed,
            retries=settings.handler_retries,
            backoff_s=settings.handler_backoff_s,
            backoff_max_s=settings.handler_backoff_max_s,
            partitions=settings.topic_partitions,
            publishes=publishes,
            signer=signer,
            verifier=verifier,
            security=KafkaSecurity.from_settings(settings),
            max_event_bytes=settings.max_event_bytes,
            stall_s=settings.consumer_stall_s,
        )

    # -- publishing ---------------------------------------------------------------------------

    async def publish(self, event: Event) -> None:
        await self.publish_record(encode(event))

    async def publish_record(self, record: KafkaRecord) -> None:
        """Publish one encoded event (what the outbox relay sends)."""
        self._check_declared(record.topic)
        await self.broker.publish(
            record.value, record.topic, key=record.key, headers=self._signed(record)
        )
        self.metrics.events_published.labels(record.topic).inc()
        log.debug("event.published", topic=record.topic, event_id=record.headers.get("ce_id"))

    def _signed(self, record: KafkaRecord) -> dict[str, str]:
        """The record's headers, with this service's signature on a control event."""
        if self.signer is None:
            return record.headers
        return self.signer.sign(record.topic, record.headers, record.value)

    async def _oversized(self, raw: Any, group: str) -> bool:
        """True (and dead-lettered, cut down, with the reason) for a message larger than
        ``max_event_bytes``: it is never decoded, and it cannot stall its partition."""
        size = len(raw.value or b"")
        if size <= self.max_event_bytes:
            return False
        reason = f"too_large: {size} bytes, at most {self.max_event_bytes} are read"
        await self._dead_letter(raw, group, reason, attempts=0)
        return True

    async def _unverified(self, raw: Any, group: str) -> bool:
        """True (and dead-lettered with the reason) for a control event that is not signed
        by a trusted service."""
        if self.verifier is None:
            return False
        problem = self.verifier.problem(raw.topic, raw.headers, raw.value)
        if problem is None:
            return False
        self.metrics.events_unverified.labels(raw.topic).inc()
        await self._dead_letter(raw, group, f"signature: {problem}", attempts=0)
        return True

    def _check_declared(self, topic: str) -> None:
        """A service publishes only the events its spec declares (so its AsyncAPI document,
        generated from the spec, covers everything it sends)."""
        if self.publishes is not None and topic not in self.publishes:
            raise UndeclaredEvent(f"{self.service} does not declare that it publishes {topic}")

    async def publish_many(self, events: list[Event]) -> list[BaseException | None]:
        """Publish several events pipelined: every send is queued first, then all acks are
        awaited together (one round trip for the lot instead of one per event). Returns one
        entry per event: None when acknowledged, else the exception."""
        futures: list[Any] = []
        for event in events:
            record = encode(event)
            self._check_declared(record.topic)
            futures.append(
                await self.broker.publish(
                    record.value,
                    record.topic,
                    key=record.key,
                    headers=self._signed(record),
                    no_confirm=True,
                )
            )
        results = await asyncio.gather(*futures, return_exceptions=True)
        outcome: list[BaseException | None] = []
        for event, result in zip(events, results, strict=True):
            if isinstance(result, BaseException):
                outcome.append(result)
            else:
                outcome.append(None)
                self.metrics.events_published.labels(event.topic).inc()
        return outcome

    async def publish_records(self, topic: str, records: list[RawRecord]) -> None:
        """Publish pre-encoded records of one topic in as few requests as possible: they are
        packed into Kafka record batches per partition (the key picks the partition exactly as
        the default partitioner does for ``publish``, so per-key order holds across both), then
        all acknowledgements are awaited together. Raises if any batch fails."""
        if not records:
            return
        self._check_declared(topic)
        producer = await self._bulk_producer()
        partitions = sorted(await producer.partitions_for(topic))
        by_partition: dict[int, list[RawRecord]] = {}
        for record in records:
            by_partition.setdefault(self._partition(topic, record[0], partitions), []).append(
                record
            )
        futures = []
        for partition, items in by_partition.items():
            batch = producer.create_batch()
            for key, value, headers in items:
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    batch.close()
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                        raise ValueError(f"a {len(value)}-byte record does not fit a batch")
            batch.close()
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*futures)
        self.metrics.events_published.labels(topic).inc(len(records))

    def _partition(self, topic: str, key: bytes, partitions: list[int]) -> int:
        cached = self._partition_of.get((topic, key))
        if cached is None or cached not in partitions:
            cached = self._partitioner(key, partitions, partitions)
            self._partition_of[(topic, key)] = cached
        return cached

    async def _bulk_producer(self) -> AIOKafkaProducer:
        """A producer of its own for record batches (started on first use): large batches
        without changing how single events are published."""
        if self._bulk is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                client_id=f"modelbus-{self.service}-bulk",
                max_batch_size=BULK_BATCH_BYTES,
                max_request_size=BULK_BATCH_BYTES + 65_536,
                **self.security.client_options(),
            )
            await producer.start()
            if self._bulk is None:
                self._bulk = producer
            else:  # another caller started one meanwhile
                await producer.stop()
        return self._bulk

    # -- consuming ----------------------------------------------------------------------------

    def subscribe(
        self,
        event_cls: type[E],
        *,
        group: str,
        handler: Handler[E],
        offset_reset: str = "earliest",
        dedupe: bool = True,
    ) -> None:
        """Register ``handler`` for ``event_cls`` in consumer ``group`` (before ``start``).

        All subscriptions of one group share one Kafka consumer (one group membership, one
        rebalance), and messages are dispatched to the handler of their topic.
        """
        if self._started:
            raise RuntimeError("subscribe before start()")
        routes = self._groups.setdefault(group, {})
        if any(r.batch for r in routes.values()):
            raise ValueError(f"group {group} already has batch subscriptions")
        if event_cls.topic in routes:
            raise ValueError(f"group {group} already handles {event_cls.topic}")
        routes[event_cls.topic] = _Route(event_cls, handler, dedupe)
        self._offset_reset[group] = offset_reset

    def subscribe_batch(
        self,
        event_cls: type[E],
        *,
        group: str,
        handler: BatchHandler[E] | Callable[[Columns[E]], Awaitable[None]],
        offset_reset: str = "earliest",
        columns: bool = False,
        checkpointed: bool = False,
    ) -> None:
        """Register a handler that takes the events of ``event_cls`` in batches (high-volume
        telemetry: predictions, labels). The handler must be idempotent itself (no ledger:
        one lookup per event would cost more than the work). A group is either all-batch or
        all-single. Invalid messages are dead-lettered one by one; a batch whose handler keeps
        failing is dead-lettered whole, with the reason. With ``columns`` the handler gets the
        batch as ``Columns[event_cls]`` (the contracts' batch decoder, no pydantic model per
        event) instead of a list of events. A ``checkpointed`` group keeps its state in memory:
        the bus does not commit it, the service does, as far as its checkpoint covers
        (``offsets(group)``, see ``modelbus_platform.offsets``)."""
        if self._started:
            raise RuntimeError("subscribe before start()")
        routes = self._groups.setdefault(group, {})
        if any(not r.batch for r in routes.values()):
            raise ValueError(f"group {group} already has single-event subscriptions")
        if routes and checkpointed != (group in self._offsets):
            raise ValueError(f"group {group}: all its subscriptions are checkpointed or none")
        if checkpointed:
            self.offsets(group)
        if event_cls.topic in routes:
            raise ValueError(f"group {group} already handles {event_cls.topic}")
        decoder = functools.partial(decode_batch, event_cls) if columns else None
        routes[event_cls.topic] = _Route(event_cls, handler, False, batch=True, decoder=decoder)
        self._offset_reset[group] = offset_reset

    def offsets(self, group: str) -> GroupOffsets:
        """The handled offsets of checkpointed ``group`` (made on first use), which the
        service commits once its state holds them."""
        if group not in self._offsets:
            self._offsets[group] = GroupOffsets(group, lambda: self._consumer(group))
        return self._offsets[group]

    def _consumer(self, group: str) -> Any:
        return getattr(self._subscribers.get(group), "consumer", None)

    def _register_consumers(self) -> None:
        for group, routes in self._groups.items():
            self._register_group(group, routes)

    def _register_group(self, group: str, routes: dict[str, _Route]) -> None:
        batch = any(r.batch for r in routes.values())
        options: dict[str, Any] = {"batch": True, "max_records": 1000} if batch else {}
        offsets = self._offsets.get(group)
        if offsets is not None:
            options["listener"] = offsets.listener()
        subscriber = self.broker.subscriber(
            *routes,
            group_id=group,
            # a checkpointed group is committed by its service (``offsets``), never here
            ack_policy=AckPolicy.MANUAL if offsets is not None else AckPolicy.NACK_ON_ERROR,
            auto_offset_reset=self._offset_reset[group],  # type: ignore[arg-type]
            title=f"{self.service}:{group}",
            decoder=_raw_body,  # we decode (and dead-letter) ourselves; never let it parse
            # a record above max_event_bytes must still be fetched, to be dead-lettered: a
            # broker that does not hand out an oversized first record would stall on it
            max_partition_fetch_bytes=FETCH_BYTES,
            **options,
        )

        async def _consume(msg: KafkaMessage) -> None:
            if offsets is not None:
                records = list(msg.raw_message)
                async with offsets.handling(records):
                    await self.process_batch(group, routes, records)
                return
            if batch:
                await self.process_batch(group, routes, list(msg.raw_message))
                return
            raw = msg.raw_message
            route = routes[raw.topic]
            await self.process(route.event_cls, group, route.handler, raw, dedupe=route.dedupe)

        subscriber(_consume)
        self._subscribers[group] = subscriber

    async def sample_lag(self) -> dict[tuple[str, str], int]:
        """Consumer lag per (topic, group) over every partition of the group's topics (not only
        this replica's: a partition nobody reads counts), and whether each group progresses:
        a backlog whose committed offsets have not moved for ``stall_s`` while no dependency
        is awaited makes the group ``stalled`` (readiness 503, ``consumers``)."""
        lag: dict[tuple[str, str], int] = {}
        now = time.monotonic()
        for group, subscriber in self._subscribers.items():
            consumer = getattr(subscriber, "consumer", None)
            if consumer is None:
                continue
            tps = [
                TopicPartition(topic, partition)
                for topic in sorted(consumer.subscription())
                for partition in sorted(consumer.partitions_for_topic(topic) or ())
            ]
            if not tps:
                continue
            ends = await consumer.end_offsets(tps)
            behind = done = 0
            for tp in tps:
                committed = await consumer.committed(tp) or 0
                key = (tp.topic, group)
                lag[key] = lag.get(key, 0) + max(0, ends.get(tp, 0) - committed)
                behind += max(0, ends.get(tp, 0) - committed)
                done += committed
            if group in self._offsets:  # commits wait for checkpoints: handling is progress
                done += self._offsets[group].progress()
            self._note_progress(group, behind, done, now)
        for (topic, group), value in lag.items():
            self.metrics.consumer_lag.labels(topic, group).set(value)
        return lag

    def _note_progress(self, group: str, behind: int, done: int, now: float) -> None:
        last = self._progress.get(group)
        if behind == 0 or last is None or last[0] != done or group in self.waiting:
            self._progress[group] = (done, now)
            if self.stalled.pop(group, None) is not None:
                log.info("consumer.progressing", group=group)
            return
        idle = now - last[1]
        if idle >= self.stall_s and group not in self.stalled:
            self.stalled[group] = f"{behind} messages behind, no commit for {idle:.0f} s"
            log.warning("consumer.stalled", group=group, behind=behind, idle_s=round(idle))

    def consumers_ok(self) -> bool:
        """False while a consumer group has a backlog and makes no progress."""
        return not self.stalled

    async def _lag_loop(self, interval_s: float) -> None:
        last_topic_check = time.monotonic()
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.sample_lag()
            except Exception as exc:  # a metrics sampler must never take the service down
                log.debug("bus.lag_sample_failed", error=str(exc))
            if time.monotonic() - last_topic_check >= self.topic_check_s:
                last_topic_check = time.monotonic()
                await self._recreate_missing_topics()

    async def _recreate_missing_topics(self) -> None:
        """A broker that lost its topics (a restart of a memory broker) gets them back with
        the configured partitions before a client auto-creates them with another count."""
        try:
            made = await self.ensure_topics()
        except Exception as exc:
            log.debug("bus.topic_check_failed", error=str(exc))
            return
        if made:
            log.warning("bus.topics_recreated", topics=made, partitions=self.partitions)

    async def process(
        self, event_cls: type[E], group: str, handler: Handler[E], raw: Any, *, dedupe: bool = True
    ) -> None:
        """Decode, dedupe, handle with retries, dead-letter on failure. Raises only if the
        dead-letter publish itself fails, so the message is re-delivered instead of lost."""
        topic = raw.topic
        started = time.perf_counter()
        structlog.contextvars.bind_contextvars(
            topic=topic, partition=raw.partition, offset=raw.offset, group=group
        )
        try:
            if await self._oversized(raw, group) or await self._unverified(raw, group):
                return
            try:
                event = decode(raw.headers, raw.value, expected=event_cls)
            except ContractError as exc:
                await self._dead_letter(raw, group, f"contract: {exc}", attempts=0)
                return
            structlog.contextvars.bind_contextvars(
                event_id=str(event.event_id), correlation_id=str(event.correlation_id)
            )
            if dedupe and await self.processed.seen(group, event.event_id):
                self.metrics.events_consumed.labels(topic, group, "duplicate").inc()
                log.info("event.duplicate_skipped")
                return
            error = await self._handle_with_retries(handler, event, topic, group)
            if error is not None:
                await self._dead_letter(raw, group, error, attempts=self.retries + 1)
                return
            if dedupe:
                await self.processed.mark(group, event.event_id)
            self.metrics.events_consumed.labels(topic, group, "ok").inc()
        finally:
            self.metrics.event_seconds.labels(topic, group).observe(time.perf_counter() - started)
            structlog.contextvars.unbind_contextvars(
                "topic", "partition", "offset", "group", "event_id", "correlation_id"
            )

    async def process_batch(self, group: str, routes: dict[str, _Route], raws: list[Any]) -> None:
        """Decode a batch, dead-letter what is invalid, hand each topic's events to its handler
        in offset order (with retries), dead-letter the rest of a batch that keeps failing."""
        by_topic: dict[str, list[tuple[Any, Event]]] = {}
        undecoded: dict[str, list[Any]] = {}
        limit = self.max_event_bytes
        if any(len(raw.value or b"") > limit for raw in raws):
            raws = [raw for raw in raws if not await self._oversized(raw, group)]
        topics = set(map(_topic_of, raws))
        if len(topics) == 1 and routes[next(iter(topics))].decoder is not None:
            topic = next(iter(topics))  # one topic, decoded by its route: no loop per record
            undecoded[topic], by_topic[topic] = list(raws), []
            raws = []
        for raw in raws:
            route = routes[raw.topic]
            if await self._unverified(raw, group):
                continue
            if route.decoder is not None:
                undecoded.setdefault(raw.topic, []).append(raw)
                by_topic.setdefault(raw.topic, [])
                continue
            try:
                event = decode(raw.headers, raw.value, expected=route.event_cls)
            except ContractError as exc:
                await self._dead_letter(raw, group, f"contract: {exc}", attempts=0)
                continue
            by_topic.setdefault(raw.topic, []).append((raw, event))
        for topic, items in by_topic.items():
            started = time.perf_counter()
            payload: Any = [event for _, event in items]
            accepted = [raw for raw, _ in items]
            decoder = routes[topic].decoder
            if decoder is not None:
                payload, accepted, rejected = decoder(undecoded[topic])
                for raw, reason in rejected:
                    await self._dead_letter(raw, group, f"contract: {reason}", attempts=0)
                if not accepted:
                    continue
            error = await self._handle_with_retries(routes[topic].handler, payload, topic, group)
            if error is not None:
                for raw in accepted:
                    await self._dead_letter(raw, group, error, attempts=self.retries + 1)
            else:
                self.metrics.events_consumed.labels(topic, group, "ok").inc(len(accepted))
            self.metrics.event_seconds.labels(topic, group).observe(time.perf_counter() - started)

    async def _handle_with_retries(
        self, handler: Callable[[Any], Awaitable[None]], event: Any, topic: str, group: str
    ) -> str | None:
        """None once ``handler`` succeeded; else the reason to dead-letter the message with.
        A permanent failure is retried ``retries`` times (backoff doubling from
        ``backoff_s``); a transient one (``transient.is_transient``: a dependency not
        answering) is retried for as long as it lasts, with capped, jittered backoff, and the
        partition waits meanwhile (``waiting`` names it: readiness is 503)."""
        attempt = waits = 0
        while True:
            try:
                await handler(event)
                if waits:
                    self._resumed(group, topic, waits)
                return None
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                short = reason[:LOG_REASON_CHARS]
                if is_transient(exc):
                    waits += 1
                    await self._wait_for_dependency(group, topic, short, waits)
                    continue
                if attempt == self.retries:
                    # the traceback only for a short message: a huge one must not flood the log
                    log.error(
                        "event.handler_failed",
                        attempts=attempt + 1,
                        error=short,
                        exc_info=len(reason) <= LOG_REASON_CHARS,
                    )
                    if waits:
                        self._resumed(group, topic, waits)
                    return f"handler: {reason}"
                self.metrics.events_consumed.labels(topic, group, "retried").inc()
                delay = self.backoff_s * (2**attempt)
                log.warning("event.handler_retry", attempt=attempt + 1, delay_s=delay, error=short)
                attempt += 1
                await asyncio.sleep(delay)

    async def _wait_for_dependency(self, group: str, topic: str, reason: str, waits: int) -> None:
        """One transient failure: note it (readiness), log it now and then, back off."""
        first = group not in self.waiting
        self.waiting[group] = f"{topic}: {reason}"
        self.metrics.events_consumed.labels(topic, group, "waited").inc()
        delay = backoff_delay(waits, self.backoff_s, self.backoff_max_s)
        now = time.monotonic()
        if first or now - self._waiting_logged.get(group, 0.0) >= WAIT_LOG_INTERVAL_S:
            self._waiting_logged[group] = now
            log.warning("event.dependency_unavailable", waits=waits, retry_in_s=delay, error=reason)
        await asyncio.sleep(delay)

    def _resumed(self, group: str, topic: str, waits: int) -> None:
        if self.waiting.pop(group, None) is not None:
            log.info("event.dependency_back", topic=topic, waits=waits)

    def dependencies_ok(self) -> bool:
        """False while a consumer waits for a dependency (readiness: ``dependencies``)."""
        return not self.waiting

    async def _dead_letter(self, raw: Any, group: str, reason: str, attempts: int) -> None:
        """Send ``raw`` to its dead-letter topic with the reason (``dead_letter_record``: never
        too large). Raises (so the message is redelivered, not lost) only while the broker
        cannot be reached; a record the broker refuses even cut down is logged, counted
        (``modelbus_dead_letters_lost_total``) and skipped: no message stalls a partition."""
        value, headers = dead_letter_record(raw, group, self.service, reason, attempts)
        topic = dlq_topic(raw.topic)
        try:
            try:
                await self.broker.publish(value, topic, key=raw.key, headers=headers)
            except TOO_LARGE:  # the headers alone, then (the value's hash stays in them)
                value, headers = b"", dead_letter_headers_only(headers, raw.value or b"")
                await self.broker.publish(value, topic, key=raw.key, headers=headers)
        except TOO_LARGE as exc:
            self.metrics.dead_letters_lost.labels(raw.topic).inc()
            log.error(
                "event.dead_letter_lost",
                reason=reason[:LOG_REASON_CHARS],
                error=f"{type(exc).__name__}: {exc}"[:LOG_REASON_CHARS],
                value_bytes=len(raw.value or b""),
            )
            return
        except Exception as exc:
            log.error(
                "event.dead_letter_failed",
                reason=reason[:LOG_REASON_CHARS],
                error=f"{type(exc).__name__}: {exc}"[:LOG_REASON_CHARS],
            )
            await asyncio.sleep(self.backoff_s)
            raise
        self.metrics.dead_lettered.labels(raw.topic).inc()
        self.metrics.events_consumed.labels(raw.topic, group, "dead_lettered").inc()
        log.warning("event.dead_lettered", reason=reason[:LOG_REASON_CHARS], attempts=attempts)

    # -- lifecycle ----------------------------------------------------------------------------

    async def ensure_topics(self, topics: Iterable[str] | None = None) -> list[str]:
        return await ensure_topics(
            self.bootstrap,
            topics or all_topics(),
            self.partitions,
            **self.security.client_options(),
        )

    async def start(self) -> None:
        await self.ensure_topics()
        self._register_consumers()
        await self._start_broker()
        self._started = True
        if self._subscribers:
            self._lag_task = asyncio.create_task(self._lag_loop(5.0))

    async def _start_broker(self) -> None:
        """``broker.start()``, with the consumer groups joined concurrently: faststream starts
        subscribers one after the other and aiokafka's ``start`` waits for the group's
        partition assignment (seconds per group on some brokers), so a service with three
        groups would wait for three joins in a row."""
        await self.broker.connect()
        await asyncio.gather(*(subscriber.start() for subscriber in self.broker.subscribers))
        for publisher in self.broker.publishers:
            await publisher.start()
        self.broker.running = True

    async def stop(self) -> None:
        if self._lag_task is not None:
            self._lag_task.cancel()
            self._lag_task = None
        if self._bulk is not None:
            bulk, self._bulk = self._bulk, None
            await bulk.stop()
        await self.broker.stop()
        self._started = False

    async def ping(self, timeout: float = 2.0) -> bool:
        try:
            return bool(await self.broker.ping(timeout=timeout))
        except Exception:
            return False


def _header_text(value: Any) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text[:DLQ_HEADER_CHARS]


def dead_letter_record(
    raw: Any, group: str, service: str, reason: str, attempts: int
) -> tuple[bytes, dict[str, str]]:
    """The value and headers of ``raw``'s dead letter: its own headers (bounded in number and
    size), the ``x-dlq-*`` ones and at most ``DLQ_VALUE_BYTES`` of its value."""
    headers: dict[str, str] = {}
    for key, value in (raw.headers or [])[:DLQ_MAX_HEADERS]:
        headers[str(key)[:200]] = _header_text(value)
    value = raw.value or b""
    headers.update(
        {
            DLQ_REASON: reason[:4000],
            DLQ_SOURCE_TOPIC: raw.topic,
            DLQ_PARTITION: str(raw.partition),
            DLQ_OFFSET: str(raw.offset),
            DLQ_GROUP: group,
            DLQ_SERVICE: service,
            DLQ_ATTEMPTS: str(attempts),
            DLQ_AT: datetime.now(UTC).isoformat(),
        }
    )
    if len(value) > DLQ_VALUE_BYTES:
        headers[DLQ_VALUE_SIZE] = str(len(value))
        headers[DLQ_VALUE_SHA256] = hashlib.sha256(value).hexdigest()
        value = value[:DLQ_VALUE_BYTES]
    return value, headers


def dead_letter_headers_only(headers: dict[str, str], original: bytes) -> dict[str, str]:
    """The ``x-dlq-*`` and CloudEvents id/type headers, without the value (the last resort)."""
    kept = {k: v for k, v in headers.items() if k.startswith(DLQ_HEADER_PREFIX) or k in CE_KEPT}
    kept[DLQ_VALUE_SIZE] = str(len(original))
    kept[DLQ_VALUE_SHA256] = hashlib.sha256(original).hexdigest()
    return kept


async def _raw_body(msg: Any) -> Any:
    return msg.body


async def ensure_topics(
    bootstrap: str, topics: Iterable[str], partitions: int = 3, **options: Any
) -> list[str]:
    """Create the topics that do not exist yet (idempotent, safe from several services);
    ``options`` are the connection's (``KafkaSecurity.client_options``). The ones it made."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **options)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in dict.fromkeys(topics) if t not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in missing]
                )
            except TopicAlreadyExistsError:
                pass
        return missing
    finally:
        await admin.close()
