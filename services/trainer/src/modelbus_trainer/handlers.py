"""Thin event handlers: each takes the parsed event and calls the service. Subscriptions (with
their consumer groups) are declared here and wired in ``bootstrap``; so is what a retraining
schedule's cron fire does (publish its TrainingRequested)."""

from __future__ import annotations

from modelbus_contracts import DriftDetected, LabelObserved, PredictionMade, TrainingRequested
from modelbus_platform.bus import EventBus, Publisher
from modelbus_platform.scheduler import Fire

from .config import ScheduleSpec
from .domain import scheduled_event
from .service import TrainerService

FEEDBACK_GROUP = "trainer-feedback"
TRIGGER_GROUP = "trainer"


class Handlers:
    def __init__(self, service: TrainerService) -> None:
        self.service = service

    async def prediction_made(self, event: PredictionMade) -> None:
        await self.service.record_prediction(event)

    async def label_observed(self, event: LabelObserved) -> None:
        await self.service.record_label(event)

    async def predictions_made(self, events: list[PredictionMade]) -> None:
        await self.service.record_predictions(events)

    async def labels_observed(self, events: list[LabelObserved]) -> None:
        await self.service.record_labels(events)

    async def training_requested(self, event: TrainingRequested) -> None:
        await self.service.on_training_requested(event)

    async def drift_detected(self, event: DriftDetected) -> None:
        await self.service.on_drift(event)


def subscribe(bus: EventBus, service: TrainerService) -> Handlers:
    handlers = Handlers(service)
    bus.subscribe_batch(PredictionMade, group=FEEDBACK_GROUP, handler=handlers.predictions_made)
    bus.subscribe_batch(LabelObserved, group=FEEDBACK_GROUP, handler=handlers.labels_observed)
    bus.subscribe(TrainingRequested, group=TRIGGER_GROUP, handler=handlers.training_requested)
    bus.subscribe(DriftDetected, group=TRIGGER_GROUP, handler=handlers.drift_detected)
    return handlers


async def schedule_fired(fire: Fire[ScheduleSpec], *, publisher: Publisher) -> None:
    """A retraining schedule's cron fire: publish its TrainingRequested (the trainer consumes it
    like any other request)."""
    await publisher.publish(scheduled_event(fire))
