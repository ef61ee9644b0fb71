"""Thin event handlers: the bus hands over a parsed event, the service does the work (and
writes what follows to its outbox). Their subscriptions are declared in ``bootstrap.SPEC``."""

from __future__ import annotations

from modelbus_contracts import ModelEvaluated, ModelRollbackRequested, ModelTrained

from .service import RegistryService


async def model_trained(service: RegistryService, event: ModelTrained) -> None:
    await service.register(event)


async def model_evaluated(service: RegistryService, event: ModelEvaluated) -> None:
    await service.record_evaluation(event)


async def rollback_requested(service: RegistryService, event: ModelRollbackRequested) -> None:
    await service.request_rollback(event)
