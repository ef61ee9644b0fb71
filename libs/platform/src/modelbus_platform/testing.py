"""Test doubles of the platform's ports, for unit tests (production code never imports this):
an in-memory outbox and a relay that publishes at once."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import Any

from modelbus_contracts import Event

from .outbox import Pending, Relay, stamped


class MemoryOutbox:
    """The outbox of in-memory repositories: records wait in a list."""

    def __init__(self) -> None:
        self.waiting: list[Pending] = []

    def add(self, events: Iterable[Event], doc_id: Any = None) -> None:
        for event_id, seq, record in stamped(events):
            self.waiting.append(Pending(doc_id, event_id, seq, seq, record))

    async def pending(self, limit: int) -> list[Pending]:
        return self.waiting[:limit]

    async def published(self, items: Sequence[Pending]) -> None:
        done = {id(p) for p in items}
        self.waiting = [p for p in self.waiting if id(p) not in done]


class InlineRelay(Relay):
    """``notify`` publishes at once, so a test sees the events right after the call that
    caused them. Like the real relay it never fails the caller: what could not be published
    stays pending for the next ``drain``."""

    async def notify(self) -> None:
        with contextlib.suppress(Exception):
            await self.drain()
