"""Test helpers shared by the suites: publish events as an upstream system would, watch what
services publish on the broker, and hand the bus records shaped like the ones aiokafka gives
it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from modelbus_contracts import Event, decode, encode


async def publish(bootstrap: str, *events: Event) -> None:
    """Publish ``events`` (CloudEvents binary mode) with a plain aiokafka producer, in order."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for event in events:
            record = encode(event)
            headers = [(k, v.encode()) for k, v in record.headers.items()]
            await producer.send_and_wait(
                record.topic, record.value, key=record.key, headers=headers
            )
    finally:
        await producer.stop()


@dataclass
class ConsumedRecord:
    """The shape of an aiokafka ``ConsumerRecord``, as the bus reads it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, Any]]


class EventTap:
    """A raw consumer (own group, from the beginning) keeping one model's events, decoded."""

    def __init__(self, bootstrap: str, model: str, topics: Iterable[str]) -> None:
        self.model = model.encode()
        self.events: list[Event] = []
        self.consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=bootstrap,
            group_id=f"tap-{uuid.uuid4().hex}",
            auto_offset_reset="earliest",
        )
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.consumer.start()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for message in self.consumer:
            if message.key == self.model:
                self.events.append(decode(message.headers, message.value))

    async def wait_for(self, predicate: Callable[[Event], bool], timeout: float = 30.0) -> Event:
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
        await self.consumer.stop()
