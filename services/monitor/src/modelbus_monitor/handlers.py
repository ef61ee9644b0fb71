"""Thin event handlers: every subscription of the monitor, in consumer group ``monitor``."""

from __future__ import annotations

from modelbus_contracts import LabelObserved, ModelPromoted, ModelRolledBack, PredictionMade
from modelbus_platform.bus import EventBus

from .service import MonitorService

GROUP = "monitor"


def subscribe(bus: EventBus, service: MonitorService, group: str = GROUP) -> None:
    async def prediction_made(event: PredictionMade) -> None:
        await service.on_prediction(event)

    async def label_observed(event: LabelObserved) -> None:
        await service.on_label(event)

    async def model_promoted(event: ModelPromoted) -> None:
        await service.on_promoted(event)

    async def model_rolled_back(event: ModelRolledBack) -> None:
        await service.on_rolled_back(event)

    bus.subscribe(PredictionMade, group=group, handler=prediction_made)
    bus.subscribe(LabelObserved, group=group, handler=label_observed)
    bus.subscribe(ModelPromoted, group=group, handler=model_promoted)
    bus.subscribe(ModelRolledBack, group=group, handler=model_rolled_back)
