"""Cron schedules: the one scheduler every service that acts on a clock runs.

A service keys its schedules (by model name) and describes each with a ``CronSpec`` subclass: a
cron expression in UTC plus the service's own fields (what to train on, what file to score).
``CronScheduler.run()`` sleeps until the earliest next fire time (at most ``max_sleep_s`` at a
time), then hands each schedule whose time has come to ``fire`` as a ``Fire``; ``fire``
publishes the event the schedule stands for (TrainingRequested, BatchScoringRequested).

- Deterministic fire ids: ``Fire.id`` is ``uuid5(namespace, "<key>/<fire time>")``, so every
  replica running the same schedule derives the same id for the same fire, and what they publish
  is deduplicated downstream (event ids, job ids).
- Fires missed while no process ran are not caught up: next fire times count from the start.
  A schedule whose several fire times passed during one sleep (a paused process) fires once, for
  the latest of them.
- A ``fire`` that raises (the broker is down) is retried on the next wake-up, ``retry_s`` later,
  for the same fire time; the schedule advances only once its fire succeeded.
- The clock and the sleep are injected: tests drive time by hand.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

import structlog
from croniter import croniter
from pydantic import BaseModel, Field, field_validator

log = structlog.get_logger(__name__)


def is_cron(expression: str) -> bool:
    """A cron expression the scheduler can run."""
    return bool(croniter.is_valid(expression))


class CronSpec(BaseModel):
    """When a schedule fires; services subclass it with what the fire is about."""

    cron: str = Field(description="cron expression in UTC, e.g. '0 3 * * *' = daily at 03:00")

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        if not is_cron(value):
            raise ValueError(f"not a cron expression: {value!r}")
        return value


S = TypeVar("S", bound=CronSpec)


@dataclass(frozen=True, slots=True)
class Fire(Generic[S]):
    """One schedule's fire: which schedule, for which fire time, and its deterministic id."""

    key: str
    spec: S
    at: datetime
    id: uuid.UUID


def next_fire(cron: str, after: datetime) -> datetime:
    """The first fire time of ``cron`` (UTC) strictly after ``after``."""
    return croniter(cron, after.astimezone(UTC)).get_next(datetime).astimezone(UTC)


def fire_id(namespace: uuid.UUID, key: str, at: datetime) -> uuid.UUID:
    return uuid.uuid5(namespace, f"{key}/{at.astimezone(UTC).isoformat()}")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class CronScheduler(Generic[S]):
    def __init__(
        self,
        schedules: Mapping[str, S],
        fire: Callable[[Fire[S]], Awaitable[object]],
        *,
        namespace: uuid.UUID,
        clock: Callable[[], datetime] = _utcnow,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_sleep_s: float = 30.0,
        retry_s: float = 0.5,
        name: str = "schedule",
        live: bool = False,
    ) -> None:
        self.schedules = dict(schedules)
        self.live = live  # schedules may be set while it runs (``set``): keep running
        self.fire = fire
        self.namespace = namespace
        self.clock = clock
        self.sleep = sleep
        self.max_sleep_s = max_sleep_s
        self.retry_s = retry_s
        self.name = name
        self.next_at: dict[str, datetime] = {}

    def start_from(self, now: datetime) -> None:
        """Next fire times counted from ``now``: nothing before it is caught up."""
        self.next_at = {key: next_fire(spec.cron, now) for key, spec in self.schedules.items()}

    def set(self, key: str, spec: S | None, now: datetime) -> bool:
        """Add, change (``spec``) or remove (None) one schedule while running; its next fire
        is counted from ``now``. False when nothing changed."""
        if self.schedules.get(key) == spec:
            return False
        if spec is None:
            self.schedules.pop(key, None)
            self.next_at.pop(key, None)
        else:
            self.schedules[key] = spec
            self.next_at[key] = next_fire(spec.cron, now)
        log.info(
            "schedule.changed",
            scheduler=self.name,
            key=key,
            cron=spec.cron if spec else None,
            next_at=self.next_at[key].isoformat() if key in self.next_at else None,
        )
        return True

    async def fire_due(self, now: datetime) -> list[Fire[S]]:
        """Fire every schedule whose time has come (once, for its latest passed fire time);
        returns the fires that succeeded. A failed fire keeps its schedule due."""
        fired = []
        for key, spec in list(self.schedules.items()):
            due = self.next_at.get(key)
            if due is None or due > now:
                continue
            latest = due
            while (following := next_fire(spec.cron, latest)) <= now:
                latest = following
            fire = Fire(key, spec, latest, fire_id(self.namespace, key, latest))
            try:
                await self.fire(fire)
            except Exception as exc:
                log.warning(
                    "schedule.fire_failed",
                    scheduler=self.name,
                    key=key,
                    fire_at=latest.isoformat(),
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in_s=self.retry_s,
                )
                continue
            self.next_at[key] = next_fire(spec.cron, latest)
            fired.append(fire)
            log.info(
                "schedule.fired",
                scheduler=self.name,
                key=key,
                fire_at=latest.isoformat(),
                fire_id=str(fire.id),
                next_at=self.next_at[key].isoformat(),
            )
        return fired

    def seconds_to_next(self, now: datetime) -> float:
        """Until the earliest next fire, at most ``max_sleep_s``; an overdue (failed) fire is
        retried after ``retry_s``, not spun on."""
        if not self.next_at:
            return self.max_sleep_s
        wait = (min(self.next_at.values()) - now).total_seconds()
        return min(self.max_sleep_s, max(self.retry_s, wait))

    async def run(self) -> None:
        """Fire schedules until cancelled; returns at once if there are none (and none can be
        set while it runs)."""
        if not self.schedules and not self.live:
            return
        self.start_from(self.clock())
        log.info(
            "schedule.started",
            scheduler=self.name,
            next_at={key: at.isoformat() for key, at in self.next_at.items()},
        )
        while True:
            await self.fire_due(self.clock())
            await self.sleep(self.seconds_to_next(self.clock()))
