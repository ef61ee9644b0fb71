"""Thin event handlers: each takes the parsed event(s) and calls the service. Their
subscriptions (and consumer groups) are declared in ``bootstrap.SPEC``: telemetry
(predictions, labels) in batches decoded into columns; promotions and rollbacks one by one. The
join ignores re-delivered predictions and labels, so the telemetry needs no ledger lookup."""

from __future__ import annotations

from modelbus_contracts import (
    Columns,
    LabelObserved,
    ModelEvaluated,
    ModelPolicyChanged,
    ModelPromoted,
    ModelRolledBack,
    PredictionMade,
)

from .service import MonitorService


async def predictions_made(service: MonitorService, batch: Columns[PredictionMade]) -> None:
    await service.on_prediction_batch(batch)


async def labels_observed(service: MonitorService, batch: Columns[LabelObserved]) -> None:
    await service.on_label_batch(batch)


async def model_promoted(service: MonitorService, event: ModelPromoted) -> None:
    await service.on_promoted(event)


async def model_rolled_back(service: MonitorService, event: ModelRolledBack) -> None:
    await service.on_rolled_back(event)


async def model_evaluated(service: MonitorService, event: ModelEvaluated) -> None:
    await service.on_evaluated(event)


async def policy_changed(service: MonitorService, event: ModelPolicyChanged) -> None:
    await service.on_policy_changed(event)
