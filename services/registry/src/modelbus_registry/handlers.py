"""Thin event handlers: the bus hands over a parsed event, the service does the work and
publishes what follows. Subscriptions are made here, in one consumer group."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from modelbus_contracts import ModelEvaluated, ModelRollbackRequested, ModelTrained
from modelbus_platform.bus import EventBus

from .service import RegistryService


def make_handlers(
    service: RegistryService,
) -> tuple[Callable[[ModelTrained], Awaitable[None]], Callable[[ModelEvaluated], Awaitable[None]]]:
    async def on_model_trained(event: ModelTrained) -> None:
        await service.register(event)

    async def on_model_evaluated(event: ModelEvaluated) -> None:
        await service.record_evaluation(event)

    return on_model_trained, on_model_evaluated


def subscribe(bus: EventBus, service: RegistryService, group: str = "registry") -> None:
    """ModelTrained, ModelEvaluated and ModelRollbackRequested, at-least-once, deduped on
    event_id by the bus."""
    on_model_trained, on_model_evaluated = make_handlers(service)
    bus.subscribe(ModelTrained, group=group, handler=on_model_trained)
    bus.subscribe(ModelEvaluated, group=group, handler=on_model_evaluated)

    async def on_rollback_requested(event: ModelRollbackRequested) -> None:
        await service.request_rollback(event)

    bus.subscribe(ModelRollbackRequested, group=group, handler=on_rollback_requested)
