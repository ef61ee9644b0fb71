"""Thin handlers: a BatchScoringRequested (consumer group ``batch``) and a cron fire.

Neither waits on a job: a request is recorded and the job runs in the background, so the
consumer never blocks on a batch; a cron fire only publishes the request it stands for.
"""

from __future__ import annotations

import asyncio

from modelbus_contracts import BatchScoringRequested
from modelbus_platform.bus import Publisher
from modelbus_platform.scheduler import Fire

from .domain import BatchSchedule, scheduled_request
from .ports import JobStoreUnavailable
from .service import BatchService

BATCH_GROUP = "batch"
READY_WAIT_S = 30.0


async def batch_requested(service: BatchService, event: BatchScoringRequested) -> None:
    """Accept the job and return. Raises (so the bus retries, the request is not lost) while
    the job store is not ready."""
    try:
        await asyncio.wait_for(service.ready.wait(), READY_WAIT_S)
    except TimeoutError as exc:
        raise JobStoreUnavailable("the batch job store is not ready") from exc
    await service.submit_event(event)


async def schedule_fired(fire: Fire[BatchSchedule], *, publisher: Publisher, producer: str) -> None:
    """A cron fire becomes a BatchScoringRequested (deterministic job and event ids: every
    replica's fire of the same time is one job)."""
    await publisher.publish(scheduled_request(fire, producer))
