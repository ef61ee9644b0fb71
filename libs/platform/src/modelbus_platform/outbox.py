"""The outbox: a state change and the events it causes are written together, one relay publishes.

A service that changes state and emits events never publishes "after" its write by hand. It
puts the events, already encoded as CloudEvents Kafka records, into the *same document write*
as the state change (``outbox_set`` for an update's ``$set``, ``outbox_doc`` for an insert), so
the two succeed or fail together: a single-document write is atomic in MongoDB, and the
MongoDB-wire server used locally has no isolated multi-document transactions to rely on. The
document then carries ``outbox`` (event id -> encoded record) and ``outbox_seq`` (set while
anything in it is unpublished, indexed).

One ``Relay`` per service drains every outbox store it is given: in order of sequence, each
record is published (event ids are deterministic, so a republish after a crash is deduplicated
by the consumers) and then removed from its document. It runs in the background: woken at once
by ``notify()`` after a write, it also polls, so what a crashed process or a broker outage left
behind goes out as soon as the broker answers, retried with capped, jittered backoff. A request
that moved state therefore answers promptly whether the broker is up or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection

from modelbus_contracts import Event, KafkaRecord, encode

from .metrics import Metrics

log = structlog.get_logger(__name__)

FIELD = "outbox"
PENDING = "outbox_seq"


class _Sequence:
    """Strictly increasing per process (time-based, so roughly ordered across processes)."""

    def __init__(self) -> None:
        self._last = 0.0

    def next(self) -> float:
        self._last = max(time.time(), self._last + 1e-6)
        return self._last


_seq = _Sequence()


def stamped(events: Iterable[Event]) -> list[tuple[str, float, KafkaRecord]]:
    """``events`` encoded, each with its event id and its outbox sequence number."""
    return [(str(event.event_id), _seq.next(), encode(event)) for event in events]


def _entries(events: Iterable[Event]) -> tuple[dict[str, dict[str, Any]], float]:
    out = {
        event_id: {
            "topic": record.topic,
            "key": record.key,
            "value": record.value,
            "headers": record.headers,
            "seq": seq,
        }
        for event_id, seq, record in stamped(events)
    }
    return out, max((e["seq"] for e in out.values()), default=0.0)


def outbox_set(events: Iterable[Event]) -> dict[str, Any]:
    """Fields to merge into an update's ``$set``: ``events`` join the document's outbox."""
    entries, seq = _entries(events)
    if not entries:
        return {}
    fields: dict[str, Any] = {f"{FIELD}.{event_id}": e for event_id, e in entries.items()}
    fields[PENDING] = seq
    return fields


def outbox_doc(events: Iterable[Event]) -> dict[str, Any]:
    """Fields to merge into a new document: its outbox holds ``events``."""
    entries, seq = _entries(events)
    return {FIELD: entries, PENDING: seq} if entries else {}


@dataclass(frozen=True, slots=True)
class Pending:
    """One unpublished record and where it waits."""

    doc_id: Any
    event_id: str
    seq: float
    doc_seq: float  # the document's ``outbox_seq`` when it was read
    record: KafkaRecord


class OutboxStore(Protocol):
    """Where pending records wait: one collection's outboxes (or an in-memory list)."""

    async def pending(self, limit: int) -> list[Pending]:
        """Unpublished records, oldest first (at most about ``limit``)."""

    async def published(self, items: Sequence[Pending]) -> None:
        """Remove published records from their documents."""


class RecordPublisher(Protocol):
    async def publish_record(self, record: KafkaRecord) -> None: ...


class Notifier(Protocol):
    """What a service holds to say "state with events was written" (the relay)."""

    async def notify(self) -> None: ...


class MongoOutbox:
    """The outboxes of the documents of one collection."""

    def __init__(self, collection: AsyncCollection) -> None:
        self.col = collection

    async def init(self) -> None:
        await self.col.create_index([(PENDING, ASCENDING)])

    async def pending(self, limit: int) -> list[Pending]:
        cursor = (
            self.col.find({PENDING: {"$gt": 0}}, {FIELD: 1, PENDING: 1})
            .sort(PENDING, ASCENDING)
            .limit(limit)
        )
        out: list[Pending] = []
        async for doc in cursor:
            for event_id, e in (doc.get(FIELD) or {}).items():
                record = KafkaRecord(e["topic"], bytes(e["key"]), bytes(e["value"]), e["headers"])
                out.append(Pending(doc["_id"], event_id, e["seq"], doc[PENDING], record))
        return sorted(out, key=lambda p: p.seq)

    async def published(self, items: Sequence[Pending]) -> None:
        by_doc: dict[Any, list[Pending]] = {}
        for item in items:
            by_doc.setdefault(item.doc_id, []).append(item)
        for doc_id, done in by_doc.items():
            await self.col.update_one(
                {"_id": doc_id}, {"$unset": {f"{FIELD}.{p.event_id}": "" for p in done}}
            )
            # the flag goes only if no record was added since it was read (a new record always
            # sets a new sequence); otherwise the next drain finds the newcomer
            left = await self.col.find_one({"_id": doc_id}, {FIELD: 1})
            if left is not None and not left.get(FIELD):
                await self.col.update_one(
                    {"_id": doc_id, PENDING: done[0].doc_seq}, {"$unset": {PENDING: ""}}
                )


class Relay:
    """Publishes what the outbox stores hold, in order, until the broker takes it."""

    BATCH = 500

    def __init__(
        self,
        stores: Sequence[OutboxStore],
        publisher: RecordPublisher,
        *,
        metrics: Metrics | None = None,
        poll_s: float = 5.0,
        backoff_s: float = 0.2,
        max_backoff_s: float = 10.0,
    ) -> None:
        self.stores = list(stores)
        self.publisher = publisher
        self.metrics = metrics
        self.poll_s = poll_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    async def notify(self) -> None:
        """State with events was written: publish soon (never waits for the broker)."""
        self._wake.set()

    async def drain(self) -> int:
        """Publish every record pending now, oldest first; raise on the first failure (what
        was published stays published, the rest waits for the next drain)."""
        async with self._lock:
            total = 0
            sent: set[str] = set()
            while True:
                batches = [(store, await store.pending(self.BATCH)) for store in self.stores]
                items = sorted(
                    ((p, s) for s, found in batches for p in found if p.event_id not in sent),
                    key=lambda x: x[0].seq,
                )
                if not items:  # everything, including what was written meanwhile, is out
                    self._observe_lag(None)
                    return total
                self._observe_lag(items[0][0].seq)
                done: dict[int, list[Pending]] = {}
                try:
                    for item, store in items:
                        await self.publisher.publish_record(item.record)
                        sent.add(item.event_id)
                        done.setdefault(id(store), []).append(item)
                        total += 1
                finally:
                    for store in self.stores:
                        if done.get(id(store)):
                            await store.published(done[id(store)])

    def _observe_lag(self, oldest_seq: float | None) -> None:
        if self.metrics is not None:
            lag = 0.0 if oldest_seq is None else max(0.0, time.time() - oldest_seq)
            self.metrics.outbox_lag.set(lag)

    async def run(self) -> None:
        """Drain on every notify and every ``poll_s``; after a failure, back off (capped,
        jittered) and try again."""
        delay = 0.0
        while True:
            self._wake.clear()
            try:
                await self.drain()
                delay, wait = 0.0, self.poll_s
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = min(max(delay * 2, self.backoff_s), self.max_backoff_s)
                wait = delay * random.uniform(0.5, 1.0)
                if self.metrics is not None:
                    self.metrics.outbox_failures.inc()
                log.warning("outbox.publish_failed", error=str(exc)[:500], retry_in_s=wait)
                await asyncio.sleep(wait)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def close(self, timeout_s: float = 5.0) -> None:
        """One last drain, bounded (the service is stopping); what is left goes out at the
        next start."""
        try:
            await asyncio.wait_for(self.drain(), timeout_s)
        except Exception as exc:
            log.warning("outbox.left_pending", error=str(exc)[:500])
