"""Thin event handlers: every subscription of the monitor and its consumer groups."""

from __future__ import annotations

from modelbus_contracts import (
    Columns,
    LabelObserved,
    ModelPromoted,
    ModelRolledBack,
    PredictionMade,
)
from modelbus_platform.bus import EventBus

from .service import MonitorService

GROUP = "monitor"
CONTROL_GROUP = "monitor-control"


def subscribe(
    bus: EventBus, service: MonitorService, group: str = GROUP, control_group: str = CONTROL_GROUP
) -> None:
    """Telemetry (predictions, labels) in batches in ``group``; promotions and rollbacks one by
    one in ``control_group``. The join ignores re-delivered predictions and labels, so the
    telemetry needs no per-event ledger lookup. The telemetry comes as columns (the
    contracts' batch decoder): no pydantic model per event, bad records dead-lettered with the
    contract's reason."""

    async def predictions_made(batch: Columns[PredictionMade]) -> None:
        await service.on_prediction_batch(batch)

    async def labels_observed(batch: Columns[LabelObserved]) -> None:
        await service.on_label_batch(batch)

    async def model_promoted(event: ModelPromoted) -> None:
        await service.on_promoted(event)

    async def model_rolled_back(event: ModelRolledBack) -> None:
        await service.on_rolled_back(event)

    bus.subscribe_batch(PredictionMade, group=group, handler=predictions_made, columns=True)
    bus.subscribe_batch(LabelObserved, group=group, handler=labels_observed, columns=True)
    bus.subscribe(ModelPromoted, group=control_group, handler=model_promoted)
    bus.subscribe(ModelRolledBack, group=control_group, handler=model_rolled_back)
