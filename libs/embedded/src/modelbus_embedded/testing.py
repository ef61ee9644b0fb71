"""Test helpers shared by the suites: publish events as an upstream system would, watch what
services publish on the broker, hand the bus records shaped like the ones aiokafka gives it,
and run a service's routes in the platform's HTTP shell, failing any answer whose status its
route does not document."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from fastapi import APIRouter

from modelbus_contracts import Event, decode, encode
from modelbus_platform.http import ServiceApp, create_app
from modelbus_platform.metrics import Metrics


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


class DocumentedStatuses:
    """A middleware for API tests: once a request is answered, fail it (the ASGI app raises, so
    the test client does) if its route's OpenAPI operation does not document the status."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        statuses: list[int] = []

        async def watch(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])
            await send(message)

        await self.app(scope, receive, watch)
        route, method = scope.get("route"), scope["method"].lower()
        operation = scope["app"].openapi()["paths"].get(getattr(route, "path_format", None), {})
        if (
            statuses
            and method in operation
            and str(statuses[0]) not in operation[method]["responses"]
        ):
            raise AssertionError(
                f"{scope['method']} {route.path_format} answered {statuses[0]}, "
                f"which its OpenAPI operation does not document"
            )


def service_app(*routers: APIRouter, max_body_bytes: int = 1_000_000, **state: Any) -> ServiceApp:
    """A service's routers in the platform's app (the chain, the error body), ``state`` set on
    ``app.state``, every answer checked against the OpenAPI document (``DocumentedStatuses``)."""

    async def ready() -> dict[str, bool]:
        return {}

    app = create_app(
        title="test",
        description="test",
        metrics=Metrics("test"),
        readiness=ready,
        max_body_bytes=max_body_bytes,
    )
    for router in routers:
        app.include_router(router)
    for name, value in state.items():
        setattr(app.state, name, value)
    app.add_middleware(DocumentedStatuses)
    return app
