"""Offsets of a consumer group that keeps state in memory: committed only as far as the
state's last checkpoint covers.

A stateless consumer (a handler that writes to MongoDB before it returns) commits after every
batch. A consumer whose handler only changes memory (the monitor's detectors and join buffers,
the deployer's live windows) must not: a crash would lose what it read since its last
checkpoint, because Kafka would not hand it out again. Such a group is ``checkpointed``
(``EventBus.subscribe_batch(..., checkpointed=True)``): the bus never commits it by itself; it
keeps, per partition, the next offset whose record is *handled* (in memory), and the service
commits them once its checkpoint holds them:

- from a periodic task: ``async with offsets.paused() as covered:`` waits for the batch in
  hand, holds the next one, and yields the handled offsets; the state taken inside the block is
  exactly what those offsets cover. Save it, then ``await offsets.commit(covered)``;
- from inside the group's own handler: ``offsets.commit_after_batch()`` after a save that holds
  everything handled so far; the bus commits once the batch in hand is handled too.

A crash then replays exactly what the last checkpoint lacks (and a crash between the save and
the commit replays one interval the state holds already: a save is made to be followed by its
commit at once). A rebalance (a broker that paused past the session timeout, a replica joining)
rewinds a partition to its committed offset; the handled offsets are in memory, so a partition
this consumer had before is moved on to where its state is (``on_partitions_assigned``), and one
it never had starts at the committed offset, as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Protocol

import structlog
from aiokafka import ConsumerRebalanceListener
from aiokafka.structs import TopicPartition

log = structlog.get_logger(__name__)

Offsets = dict[TopicPartition, int]  # partition -> the next offset to read
COMMIT_TIMEOUT_S = 10.0


class StateOffsets(Protocol):
    """What a service with in-memory state needs of its consumer group's offsets."""

    def paused(self) -> contextlib.AbstractAsyncContextManager[Offsets]: ...

    async def commit(self, covered: Offsets) -> bool: ...

    def commit_after_batch(self) -> None: ...


class NoOffsets:
    """For a service wired without a checkpointed group (unit tests, fakes): nothing to hold."""

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[Offsets]:
        yield {}

    async def commit(self, covered: Offsets) -> bool:
        return True

    def commit_after_batch(self) -> None:
        return None


class GroupOffsets:
    """The handled offsets of one checkpointed group, the lock that keeps a checkpoint between
    two batches, and the commits. ``consumer`` returns the group's aiokafka consumer (None
    before the bus started)."""

    def __init__(self, group: str, consumer: Callable[[], Any]) -> None:
        self.group = group
        self._consumer = consumer
        self._lock = asyncio.Lock()
        self.handled: Offsets = {}
        self._commit_pending = False
        self.committed: Offsets = {}  # what this consumer committed last, per partition
        self.commits = 0

    # -- the bus's side ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def handling(self, records: list[Any]) -> AsyncIterator[None]:
        """Around one batch: no checkpoint runs while it is handled; once handled its
        offsets count as handled; a batch that raised is read again (the partitions are
        rewound to its first records), so none of it is skipped by a later commit."""
        async with self._lock:
            try:
                yield
            except BaseException:
                self._rewind(records)
                raise
            self.note(records)
            if self._commit_pending:
                self._commit_pending = False
                await self.commit(dict(self.handled))

    def note(self, records: Iterable[Any]) -> None:
        last: dict[tuple[str, int], int] = {}
        for record in records:  # a partition's records come in offset order: the last wins
            last[record.topic, record.partition] = record.offset
        for (topic, partition), offset in last.items():
            tp = TopicPartition(topic, partition)
            if offset + 1 > self.handled.get(tp, -1):
                self.handled[tp] = offset + 1

    def _rewind(self, records: list[Any]) -> None:
        consumer = self._consumer()
        if consumer is None:
            return
        first: Offsets = {}
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            first[tp] = min(first.get(tp, record.offset), record.offset)
        for tp, offset in first.items():
            with contextlib.suppress(Exception):  # not assigned any more: its owner reads it
                consumer.seek(tp, offset)

    def progress(self) -> int:
        """Records handled so far (a consumer that handles is progressing, committed or not)."""
        return sum(self.handled.values())

    # -- the service's side --------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[Offsets]:
        async with self._lock:
            yield dict(self.handled)

    def commit_after_batch(self) -> None:
        self._commit_pending = True

    async def commit(self, covered: Offsets) -> bool:
        """Commit ``covered`` for the partitions this consumer holds (the others are their
        owner's to commit). False (logged) when the broker did not take it: the next
        checkpoint's commit covers these offsets too."""
        consumer = self._consumer()
        if consumer is None or not covered:
            return consumer is not None
        owned = consumer.assignment()
        offsets = {
            tp: offset
            for tp, offset in covered.items()
            if tp in owned and self.committed.get(tp) != offset
        }
        if not offsets:
            return True  # nothing new since the last commit
        try:
            # aiokafka retries a commit for as long as the broker is away: bounded here, the
            # next checkpoint's commit covers these offsets too
            await asyncio.wait_for(consumer.commit(offsets), COMMIT_TIMEOUT_S)
        except Exception as exc:
            log.warning("offsets.commit_failed", group=self.group, error=str(exc))
            return False
        self.committed.update(offsets)
        self.commits += 1
        return True

    # -- rebalances ----------------------------------------------------------------------------

    def listener(self) -> ConsumerRebalanceListener:
        return _MoveToState(self)

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        """A partition this consumer handled before is read on from where its in-memory state
        is, not from the committed offset behind it (that would count records twice)."""
        consumer = self._consumer()
        if consumer is None:
            return
        async with self._lock:
            for tp in partitions:
                offset = self.handled.get(tp)
                if offset is not None:
                    consumer.seek(tp, offset)
                    log.info(
                        "offsets.resumed_from_state",
                        group=self.group,
                        topic=tp.topic,
                        partition=tp.partition,
                        offset=offset,
                    )


class _MoveToState(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, offsets: GroupOffsets) -> None:
        self.offsets = offsets

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.offsets.assigned(assigned)
