"""Thin event handlers: the bus hands over a parsed event, the service decides and publishes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from modelbus_contracts import Event, ModelRegistered

from .live_service import LiveService
from .service import DeployerService


def on_model_registered(service: DeployerService) -> Callable[[ModelRegistered], Awaitable[None]]:
    async def handle(event: ModelRegistered) -> None:
        await service.handle_registered(event)

    return handle


def on_telemetry(live: LiveService) -> Callable[[list[Event]], Awaitable[None]]:
    """PredictionMade, LabelObserved, ModelLoadFailed and ScoringFailed batches (group
    ``deployer-watch``)."""

    async def handle(events: list[Event]) -> None:
        await live.handle(events)

    return handle
