"""A checkpointed group's offsets (``modelbus_platform.offsets``) against a fake consumer."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aiokafka.structs import TopicPartition

from modelbus_platform.offsets import GroupOffsets

A, B = TopicPartition("t", 0), TopicPartition("t", 1)


class FakeConsumer:
    def __init__(self, assigned: set[TopicPartition]) -> None:
        self.assigned = assigned
        self.commits: list[dict[TopicPartition, int]] = []
        self.seeks: list[tuple[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))


def records(tp: TopicPartition, *offsets: int) -> list[SimpleNamespace]:
    return [SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=o) for o in offsets]


async def test_handled_offsets_are_committed_only_when_the_service_says_so():
    consumer = FakeConsumer({A, B})
    offsets = GroupOffsets("g", lambda: consumer)
    async with offsets.handling(records(A, 0, 1, 2) + records(B, 7)):
        pass
    assert consumer.commits == []  # handled is not committed
    async with offsets.paused() as covered:
        assert covered == {A: 3, B: 8}
    async with offsets.handling(records(A, 3)):
        pass
    assert await offsets.commit(covered)
    assert consumer.commits == [{A: 3, B: 8}]  # what the checkpoint covered, not offset 4


async def test_a_checkpoint_waits_for_the_batch_in_hand():
    consumer = FakeConsumer({A})
    offsets = GroupOffsets("g", lambda: consumer)
    release = asyncio.Event()

    async def batch() -> None:
        async with offsets.handling(records(A, 0, 1)):
            await release.wait()

    task = asyncio.create_task(batch())
    await asyncio.sleep(0)
    waiting = asyncio.create_task(offsets.paused().__aenter__())
    await asyncio.sleep(0.01)
    assert not waiting.done()  # no state is taken half-way through a batch
    release.set()
    assert await waiting == {A: 2}
    await task


async def test_commit_after_batch_covers_the_batch_in_hand_and_skips_foreign_partitions():
    consumer = FakeConsumer({A})
    offsets = GroupOffsets("g", lambda: consumer)
    async with offsets.handling(records(B, 4)):
        pass
    async with offsets.handling(records(A, 5, 6)):
        offsets.commit_after_batch()  # the handler saved its state, this batch included
    assert consumer.commits == [{A: 7}]  # B is not this consumer's any more


async def test_a_failed_batch_is_read_again_and_not_counted_as_handled():
    consumer = FakeConsumer({A, B})
    offsets = GroupOffsets("g", lambda: consumer)
    with pytest.raises(RuntimeError):
        async with offsets.handling(records(A, 10, 11) + records(B, 3)):
            raise RuntimeError("handler crashed")
    assert sorted(consumer.seeks) == [(A, 10), (B, 3)]
    assert offsets.handled == {}


async def test_a_partition_handed_back_resumes_where_the_state_is_not_at_the_commit():
    consumer = FakeConsumer({A, B})
    offsets = GroupOffsets("g", lambda: consumer)
    async with offsets.handling(records(A, 0, 1, 2)):
        pass
    await offsets.listener().on_partitions_assigned({A, B})  # a rebalance (broker paused)
    assert consumer.seeks == [(A, 3)]  # B was never handled here: its committed offset holds


async def test_a_commit_the_broker_refuses_is_reported_not_raised():
    class Refusing(FakeConsumer):
        async def commit(self, offsets):
            raise RuntimeError("rebalance in progress")

    offsets = GroupOffsets("g", lambda: Refusing({A}))
    async with offsets.handling(records(A, 0)):
        pass
    async with offsets.paused() as covered:
        pass
    assert await offsets.commit(covered) is False


async def test_offsets_already_committed_are_not_committed_again():
    consumer = FakeConsumer({A})
    offsets = GroupOffsets("g", lambda: consumer)
    async with offsets.handling(records(A, 0)):
        pass
    for _ in range(3):  # a quiet stream: the periodic checkpoint has nothing new
        async with offsets.paused() as covered:
            pass
        assert await offsets.commit(covered)
    assert consumer.commits == [{A: 1}]
