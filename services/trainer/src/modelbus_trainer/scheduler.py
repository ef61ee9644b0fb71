"""Scheduled retraining: per-model cron (``TrainerSettings.schedules``) -> TrainingRequested
(reason ``schedule``), from a background loop with an injectable clock and sleep.

Each fire time gets a deterministic event id (``uuid5(model, fire time)``): two trainer replicas
firing the same schedule publish the same event, which the bus dedupes and which maps onto one
run id. Fire times missed while no trainer was running are not caught up: after a start the
next fire time counts from now.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import structlog
from croniter import croniter

from modelbus_contracts import TrainingRequested
from modelbus_contracts.envelope import utcnow
from modelbus_platform.bus import Publisher

from .config import ScheduleSpec
from .domain import NAMESPACE

log = structlog.get_logger(__name__)

PRODUCER = "trainer"
MIN_SLEEP_S = 0.5  # an overdue fire whose publish failed is retried, not spun on


def next_fire(cron: str, after: datetime) -> datetime:
    """The first fire time of ``cron`` (UTC) strictly after ``after``."""
    base = after.astimezone(UTC)
    return croniter(cron, base).get_next(datetime).astimezone(UTC)


def scheduled_event(model: str, spec: ScheduleSpec, fire_at: datetime) -> TrainingRequested:
    since = fire_at - timedelta(hours=spec.since_hours) if spec.since_hours else None
    return TrainingRequested(
        event_id=uuid.uuid5(NAMESPACE, f"schedule:{model}:{fire_at.isoformat()}"),
        producer=PRODUCER,
        model_name=model,
        reason="schedule",
        dataset_uri=spec.dataset_uri,
        params=dict(spec.params),
        since=since if spec.dataset_uri is None else None,
    )


class RetrainScheduler:
    def __init__(
        self,
        schedules: dict[str, ScheduleSpec],
        publisher: Publisher,
        *,
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_sleep_s: float = 30.0,
    ) -> None:
        self.schedules = dict(schedules)
        self.publisher = publisher
        self.clock = clock
        self.sleep = sleep
        self.max_sleep_s = max_sleep_s
        self.next_at: dict[str, datetime] = {}

    def start_from(self, now: datetime) -> None:
        self.next_at = {m: next_fire(s.cron, now) for m, s in self.schedules.items()}

    async def fire_due(self, now: datetime) -> list[TrainingRequested]:
        """Publish one TrainingRequested per model whose fire time has come; a model whose
        fire times were all missed (e.g. a long pause) fires once, for the latest of them."""
        fired = []
        for model, spec in self.schedules.items():
            due = self.next_at.get(model)
            if due is None or due > now:
                continue
            latest = due
            while (following := next_fire(spec.cron, latest)) <= now:
                latest = following
            event = scheduled_event(model, spec, latest)
            try:
                await self.publisher.publish(event)
            except Exception:
                log.exception("schedule.publish_failed", model_name=model, fire_at=str(latest))
                continue  # retried on the next wake-up: next_at is not advanced
            self.next_at[model] = next_fire(spec.cron, latest)
            fired.append(event)
            log.info(
                "schedule.fired",
                model_name=model,
                fire_at=latest.isoformat(),
                event_id=str(event.event_id),
                next_at=self.next_at[model].isoformat(),
            )
        return fired

    def seconds_to_next(self, now: datetime) -> float:
        if not self.next_at:
            return self.max_sleep_s
        wait = (min(self.next_at.values()) - now).total_seconds()
        return min(self.max_sleep_s, max(MIN_SLEEP_S, wait))

    async def run(self) -> None:
        """Loop until cancelled."""
        self.start_from(self.clock())
        log.info("schedule.started", next_at={m: t.isoformat() for m, t in self.next_at.items()})
        while True:
            await self.fire_due(self.clock())
            await self.sleep(self.seconds_to_next(self.clock()))
