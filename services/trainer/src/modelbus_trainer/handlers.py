"""Thin event handlers: each takes the parsed event(s) and calls the service. Their
subscriptions (and consumer groups) are declared in ``bootstrap.SPEC``; so is what a retraining
schedule's cron fire does (publish its TrainingRequested)."""

from __future__ import annotations

from modelbus_contracts import (
    DriftDetected,
    LabelObserved,
    ModelPolicyChanged,
    PredictionMade,
    TrainingRequested,
)
from modelbus_platform.bus import Publisher
from modelbus_platform.scheduler import Fire

from .config import ScheduleSpec
from .domain import scheduled_event
from .service import TrainerService


async def predictions_made(service: TrainerService, events: list[PredictionMade]) -> None:
    await service.record_predictions(events)


async def labels_observed(service: TrainerService, events: list[LabelObserved]) -> None:
    await service.record_labels(events)


async def training_requested(service: TrainerService, event: TrainingRequested) -> None:
    await service.on_training_requested(event)


async def drift_detected(service: TrainerService, event: DriftDetected) -> None:
    await service.on_drift(event)


async def policy_changed(service: TrainerService, event: ModelPolicyChanged) -> None:
    """Read the model's policy again: its family and params for the next run, its schedule
    at once."""
    if service.policies is not None:
        service.policies.invalidate(event.model_name)
        await service.apply_schedule(event.model_name)


async def schedule_fired(fire: Fire[ScheduleSpec], *, publisher: Publisher) -> None:
    """A retraining schedule's cron fire: publish its TrainingRequested (the trainer consumes it
    like any other request)."""
    await publisher.publish(scheduled_event(fire))
