"""Thin event handlers: each takes the parsed event(s) and calls the service. Their
subscriptions (and consumer groups) are declared in ``bootstrap.SPEC``."""

from __future__ import annotations

from dataclasses import dataclass

from modelbus_contracts import Event, ModelPolicyChanged, ModelRegistered

from .live_service import LiveService
from .service import DeployerService


@dataclass(frozen=True)
class Deployer:
    """The deployer's two halves: decisions on registered versions, and the live watch."""

    decisions: DeployerService
    live: LiveService


async def model_registered(deployer: Deployer, event: ModelRegistered) -> None:
    await deployer.decisions.handle_registered(event)


async def telemetry(deployer: Deployer, events: list[Event]) -> None:
    """PredictionMade, LabelObserved, ModelLoadFailed and ScoringFailed batches."""
    await deployer.live.handle(events)


async def policy_changed(deployer: Deployer, event: ModelPolicyChanged) -> None:
    """The model's live policy has a new revision: the next decision reads it."""
    if deployer.decisions.live_policies is not None:
        deployer.decisions.live_policies.invalidate(event.model_name)
