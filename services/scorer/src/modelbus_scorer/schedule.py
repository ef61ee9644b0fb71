"""Cron schedules for batch jobs: per model, a cron expression and the input to score.

``Scheduler.tick()`` fires every schedule whose next fire time has come and computes the next
one (``croniter``); ``run_forever()`` ticks and sleeps until the earliest next fire. The clock
and the sleep are injected, so tests drive time by hand. Fires missed while the scorer was down
are not caught up; if several fire times passed during one sleep, the schedule fires once.

A fire's job id is deterministic (model + fire time): every scorer instance runs the same
scheduler, and the job store's unique job id makes exactly one job out of their requests.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import structlog
from croniter import croniter
from pydantic import BaseModel, Field, field_validator

log = structlog.get_logger(__name__)

SCHEDULE_NAMESPACE = uuid.UUID("0b6c8e2e-3f0c-4a51-9c1e-5d0a8f7b2c93")
MAX_SLEEP_S = 60.0


class BatchSchedule(BaseModel):
    cron: str = Field(description='cron expression in UTC, e.g. "0 2 * * *"')
    input_uri: str = Field(description="object key (or s3://bucket/key) of a .csv or .parquet")
    output_uri: str | None = Field(default=None, description="default: next to the input")
    version: int | None = Field(default=None, ge=1, description="default: the champion")

    @field_validator("cron")
    @classmethod
    def _valid(cls, value: str) -> str:
        if not croniter.is_valid(value):
            raise ValueError(f"not a cron expression: {value!r}")
        return value


def next_fire(cron: str, after: datetime) -> datetime:
    """The first fire time strictly after ``after`` (UTC)."""
    return croniter(cron, after.astimezone(UTC)).get_next(datetime)


def fire_job_id(model_name: str, fire_at: datetime) -> str:
    return f"cron-{uuid.uuid5(SCHEDULE_NAMESPACE, f'{model_name}/{fire_at.isoformat()}').hex}"


Fire = Callable[[str, BatchSchedule, datetime], Awaitable[None]]


class Scheduler:
    def __init__(
        self,
        schedules: dict[str, BatchSchedule],
        fire: Fire,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.schedules = schedules
        self.fire = fire
        self.now = now
        self.sleep = sleep
        start = now()
        self.next: dict[str, datetime] = {m: next_fire(s.cron, start) for m, s in schedules.items()}

    async def tick(self) -> list[tuple[str, datetime]]:
        """Fire what is due; returns (model, fire time) for each fire."""
        now = self.now()
        fired = []
        for model, at in sorted(self.next.items()):
            if at > now:
                continue
            schedule = self.schedules[model]
            try:
                await self.fire(model, schedule, at)
                log.info("batch.schedule_fired", model=model, fire_at=at.isoformat())
            except Exception as exc:
                log.error(
                    "batch.schedule_failed", model=model, fire_at=at.isoformat(), error=str(exc)
                )
            fired.append((model, at))
            self.next[model] = next_fire(schedule.cron, max(at, now))
        return fired

    def seconds_to_next(self) -> float:
        if not self.next:
            return MAX_SLEEP_S
        wait = (min(self.next.values()) - self.now()).total_seconds()
        return min(max(wait, 0.0), MAX_SLEEP_S)

    async def run_forever(self) -> None:
        if self.schedules:
            log.info(
                "batch.scheduler_started", next={m: t.isoformat() for m, t in self.next.items()}
            )
        while self.schedules:
            await self.tick()
            await self.sleep(self.seconds_to_next())
