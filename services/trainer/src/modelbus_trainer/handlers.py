"""Thin event handlers: each takes the parsed event(s) and calls the service. Their
subscriptions (and consumer groups) are declared in ``bootstrap.SPEC``."""

from __future__ import annotations

from modelbus_contracts import DriftDetected, LabelObserved, PredictionMade, TrainingRequested

from .service import TrainerService


async def predictions_made(service: TrainerService, events: list[PredictionMade]) -> None:
    await service.record_predictions(events)


async def labels_observed(service: TrainerService, events: list[LabelObserved]) -> None:
    await service.record_labels(events)


async def training_requested(service: TrainerService, event: TrainingRequested) -> None:
    await service.on_training_requested(event)


async def drift_detected(service: TrainerService, event: DriftDetected) -> None:
    await service.on_drift(event)
