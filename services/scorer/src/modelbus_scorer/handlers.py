"""Thin event handlers: parse (done by the bus) -> call the service -> publish (done by it).

Neither handler raises for a bad model or a bad record: a load failure keeps the current model
and is announced as ModelLoadFailed; a bad scoring request becomes ScoringFailed. They raise only
on transient trouble (registry or store unreachable), so the bus retries.
"""

from __future__ import annotations

import structlog

from modelbus_contracts import (
    ModelPromoted,
    ModelRolledBack,
    ModelRolloutChanged,
    ScoringRequested,
)

from .service import ScorerService

log = structlog.get_logger(__name__)


async def resync_on_control(
    service: ScorerService, event: ModelPromoted | ModelRolledBack | ModelRolloutChanged
) -> None:
    """The registry is the truth: the event only says *which* model to re-read."""
    outcome = await service.sync_model(event.model_name, cause=event)
    log.info(
        "control.resynced",
        event_type=event.event_type,
        model=event.model_name,
        announced_version=getattr(event, "version", getattr(event, "to_version", None)),
        outcome=outcome,
    )


async def scores_requested(service: ScorerService, events: list[ScoringRequested]) -> None:
    """A micro-batch: what arrived together is scored and published together."""
    await service.score_events(events)
