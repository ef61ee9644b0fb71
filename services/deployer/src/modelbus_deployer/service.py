"""The deployer's service layer: exactly one decision per (model, version), stored with its event.

``handle_registered`` loads the challenger, its hold-out and the champion (all sha256-verified),
runs the pure gates in ``domain`` and stores the decision document (the audit record) with its
ModelEvaluated in the same write (the outbox); the relay publishes it. A redelivered
ModelRegistered finds the stored decision and does nothing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Literal, TypeVar

import structlog

from modelbus_contracts import GateResult, ModelEvaluated, ModelRegistered
from modelbus_contracts.envelope import utcnow
from modelbus_platform.outbox import Notifier
from modelbus_platform.policies import Policies

from .config import DeployerSettings
from .domain import Clock, Policy, Verdict, judge, load_failure
from .ports import DecisionStore, HoldoutSpec, LoadError, ModelSource
from .rollout import Next, first_stage

STAGE_IDS = uuid.UUID("5b0c6f1e-3d2a-4e8b-9f7c-1a2b3c4d5e6f")


class DecisionConflict(Exception):
    """The decision is not in the state the request expects (e.g. not pending approval)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def stage_event_id(model_name: str, version: int, stage: int) -> uuid.UUID:
    """Deterministic: two replicas advancing the same stage emit the same event (deduped)."""
    return uuid.uuid5(STAGE_IDS, f"{model_name}/{version}/stage/{stage}")


def stage_event(
    doc: dict[str, Any],
    producer: str,
    nxt: Next,
    stage: int,
    *,
    reasons: list[str],
    gates: list[GateResult] | list[dict[str, Any]],
    live_metrics: dict[str, float] | None = None,
    actor: str | None = None,
) -> ModelEvaluated:
    """The ModelEvaluated of a later stage of ``doc``'s decision (approval, rollout step)."""
    return ModelEvaluated(
        event_id=stage_event_id(doc["model_name"], doc["version"], stage),
        producer=producer,
        correlation_id=doc["correlation_id"],
        causation_id=doc["event_id"],
        model_name=doc["model_name"],
        version=doc["version"],
        champion_version=doc["champion_version"],
        decision=nxt.decision,
        reasons=reasons,
        gates=gates,
        holdout=doc["holdout"],
        challenger_metrics=doc["challenger_metrics"],
        champion_metrics=doc["champion_metrics"],
        rollout=nxt.rollout,
        actor=actor,
        live_metrics=live_metrics or {},
    )


def history_entry(
    at: datetime, what: str, reasons: list[str], numbers: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    return {"at": at.isoformat(), "what": what, "reasons": reasons, "numbers": numbers, **extra}


log = structlog.get_logger(__name__)

Outcome = Literal["decided", "duplicate"]
T = TypeVar("T")


class DeployerService:
    def __init__(
        self,
        *,
        settings: DeployerSettings,
        decisions: DecisionStore,
        models: ModelSource,
        events: Notifier,
        clock: Clock = time.perf_counter,
        now: Callable[[], datetime] = utcnow,
        on_decision: Callable[[str], None] | None = None,
        live_policies: Policies | None = None,
    ) -> None:
        self.settings = settings
        self.live_policies = live_policies
        self.decisions = decisions
        self.models = models
        self.events = events
        self.clock = clock
        self.now = now
        self.on_decision = on_decision
        self.on_stage: Callable[[dict[str, Any]], None] | None = None  # the live watcher

    def policy_revision(self, model_name: str) -> int:
        """The revision of the model's live policy the last decision read (0: none)."""
        known = self.live_policies.known(model_name) if self.live_policies else None
        return known.revision if known else 0

    async def policy_for(self, model_name: str) -> Policy:
        """The model's effective policy now: settings, then its live policy (registry)."""
        if self.live_policies is None:
            return self.settings.policy_for(model_name)
        live = await self.live_policies.get(model_name)
        return self.settings.policy_for(model_name, live.promotion)

    # -- commands ---------------------------------------------------------------------------

    async def handle_registered(self, event: ModelRegistered) -> Outcome:
        """Decide on ``event``'s version once; publish the verdict at least once."""
        if await self.decisions.get(event.model_name, event.version) is not None:
            return self._duplicate(event)
        doc, evaluated = await self._decide(event)
        if not await self.decisions.insert(doc, events=[evaluated]):
            return self._duplicate(event)  # a concurrent replica decided first
        await self.events.notify()
        log.info(
            "decision.made",
            model_name=event.model_name,
            version=event.version,
            champion_version=doc["champion_version"],
            decision=doc["decision"],
            reasons=doc["reasons"],
            gates={g["name"]: g["passed"] for g in doc["gates"]},
            timings=doc["timings"],
        )
        if self.on_decision is not None:
            self.on_decision(doc["decision"])
        self._staged(doc)
        return "decided"

    def _staged(self, doc: dict[str, Any]) -> None:
        if self.on_stage is not None:
            self.on_stage(doc)

    def _duplicate(self, event: ModelRegistered) -> Outcome:
        log.info("decision.exists", model_name=event.model_name, version=event.version)
        return "duplicate"

    # -- evaluation -------------------------------------------------------------------------

    async def _decide(self, event: ModelRegistered) -> tuple[dict[str, Any], ModelEvaluated]:
        policy = await self.policy_for(event.model_name)
        started = time.perf_counter()
        timings: dict[str, float] = {}
        try:
            verdict = await self._evaluate(event, policy, timings)
        except LoadError as exc:
            log.warning(
                "decision.load_failed",
                model_name=event.model_name,
                version=event.version,
                what=exc.what,
                reason=exc.reason,
            )
            verdict = load_failure(exc.what, exc.reason)
        timings["total_ms"] = _ms_since(started)
        return self._document(event, policy, verdict, timings)

    async def _evaluate(
        self, event: ModelRegistered, policy: Policy, timings: dict[str, float]
    ) -> Verdict:
        started = time.perf_counter()
        challenger = await _named(
            "challenger artifact", self.models.load_model(event.artifact, event.model_name)
        )
        spec = HoldoutSpec.of(event.signature, challenger)
        holdout = await _named("hold-out", self.models.load_dataset(event.lineage.holdout, spec))
        champion = None
        if event.champion is not None:
            champion = await _named(
                f"champion v{event.champion.version} artifact",
                self.models.load_model(event.champion.artifact, event.model_name),
            )
        timings["load_ms"] = _ms_since(started)
        started = time.perf_counter()
        verdict = await asyncio.to_thread(
            judge,
            challenger,
            holdout,
            policy,
            champion,
            event.champion.version if event.champion else None,
            self.clock,
        )
        timings["judge_ms"] = _ms_since(started)
        return verdict

    def _document(
        self,
        event: ModelRegistered,
        policy: Policy,
        verdict: Verdict,
        timings: dict[str, float],
    ) -> tuple[dict[str, Any], ModelEvaluated]:
        champion = event.champion
        nxt = Next("reject")
        if verdict.decision == "promote":
            nxt = first_stage(policy, has_champion=champion is not None)
        evaluated = event.caused(
            ModelEvaluated,
            producer=self.settings.service_name,
            model_name=event.model_name,
            version=event.version,
            champion_version=champion.version if champion else None,
            decision=nxt.decision,
            rollout=nxt.rollout,
            reasons=verdict.reasons,
            gates=verdict.gates,
            holdout=event.lineage.holdout,
            challenger_metrics=verdict.challenger_metrics,
            champion_metrics=verdict.champion_metrics,
        )
        data = evaluated.model_dump(mode="json")
        doc = {
            "model_name": event.model_name,
            "version": event.version,
            "decision": nxt.decision,
            "stage": 0,
            "live": nxt.live,
            "rollout": data["rollout"],
            "watch": None,
            "task": verdict.task or (event.signature.task if event.signature else "binary"),
            "holdout_accuracy": verdict.challenger_metrics.get("accuracy"),
            "history": [
                history_entry(
                    self.now(), nxt.decision, data["reasons"], {}, event_id=data["event_id"]
                )
            ],
            "champion_version": data["champion_version"],
            "reasons": data["reasons"],
            "gates": data["gates"],
            "holdout": data["holdout"],
            "challenger_metrics": data["challenger_metrics"],
            "champion_metrics": data["champion_metrics"],
            "challenger_artifact": event.artifact.model_dump(mode="json"),
            "champion_artifact": champion.artifact.model_dump(mode="json") if champion else None,
            "policy": policy.as_dict(),
            "policy_revision": self.policy_revision(event.model_name),
            "latency": verdict.latency.as_dict() if verdict.latency else None,
            "timings": timings,
            "event_id": data["event_id"],
            "correlation_id": data["correlation_id"],
            "registered_event_id": str(event.event_id),
            "event": data,
            "decided_at": self.now(),
            "decided_by": self.settings.instance_id,
        }
        return doc, evaluated

    # -- later stages: approval and live rollout steps -----------------------------------------

    async def approve(self, model_name: str, version: int, actor: str, reason: str) -> dict:
        """A human approves a pending decision: its rollout starts, or it is promoted."""
        doc = await self._pending(model_name, version)
        policy = await self.policy_for(model_name)
        nxt = first_stage(policy, doc["champion_version"] is not None, approved=True)
        return await self._human(doc, nxt, actor, f"approved by {actor}: {reason}")

    async def reject(self, model_name: str, version: int, actor: str, reason: str) -> dict:
        doc = await self._pending(model_name, version)
        return await self._human(doc, Next("reject"), actor, f"rejected by {actor}: {reason}")

    async def _pending(self, model_name: str, version: int) -> dict[str, Any]:
        doc = await self.decisions.get(model_name, version)
        if doc is None:
            raise LookupError(f"no decision for {model_name} v{version}")
        if doc["decision"] != "pending_approval":
            raise DecisionConflict(
                f"{model_name} v{version} is not pending approval (decision: {doc['decision']})"
            )
        return doc

    async def _human(self, doc: dict[str, Any], nxt: Next, actor: str, reason: str) -> dict:
        reasons = [reason, *doc["reasons"]]
        event = stage_event(
            doc,
            self.settings.service_name,
            nxt,
            int(doc.get("stage") or 0) + 1,
            reasons=reasons,
            gates=doc["gates"],
            actor=actor,
        )
        stored = await self.advance(doc, nxt, event, {"actor": actor})
        if stored is None:
            raise DecisionConflict(f"{doc['model_name']} v{doc['version']} changed meanwhile")
        return await self.decisions.get(doc["model_name"], doc["version"]) or stored

    async def advance(
        self,
        doc: dict[str, Any],
        nxt: Next,
        event: ModelEvaluated,
        numbers: dict[str, Any],
    ) -> dict[str, Any] | None:
        """Move ``doc`` to its next stage by compare-and-set on its stage number, with the new
        ModelEvaluated in the same write. None if another replica moved it (nothing emitted)."""
        data = event.model_dump(mode="json")
        stage = int(doc.get("stage") or 0)
        entry = history_entry(
            self.now(), nxt.decision, data["reasons"], numbers, event_id=data["event_id"]
        )
        fields = {
            "stage": stage + 1,
            "decision": nxt.decision,
            "live": nxt.live,
            "rollout": data["rollout"],
            "reasons": data["reasons"],
            "gates": data["gates"],
            "event": data,
            "event_id": data["event_id"],
            "history": [*(doc.get("history") or []), entry],
        }
        stored = await self.decisions.transition(
            doc["model_name"], doc["version"], stage, fields, events=[event]
        )
        if stored is None:
            return None
        await self.events.notify()
        log.info(
            "decision.advanced",
            model_name=doc["model_name"],
            version=doc["version"],
            stage=stage + 1,
            decision=nxt.decision,
            rollout=data["rollout"],
            reasons=data["reasons"],
        )
        if self.on_decision is not None:
            self.on_decision(nxt.decision)
        self._staged(stored)
        return stored

    # -- queries ----------------------------------------------------------------------------

    async def list_decisions(self, model_name: str | None, limit: int) -> list[dict[str, Any]]:
        return await self.decisions.list(model_name, limit)

    async def get_decision(self, model_name: str, version: int) -> dict[str, Any] | None:
        return await self.decisions.get(model_name, version)

    async def policies(self, model_name: str | None = None) -> dict[str, Any]:
        """The default policy and the effective policy of every overridden (or named) model,
        its live policy (registry) included."""
        names = set(self.settings.policies)
        if model_name:
            names.add(model_name)
        return {
            "default": self.settings.default_policy().as_dict(),
            "models": {n: (await self.policy_for(n)).as_dict() for n in sorted(names)},
        }


async def _named(what: str, load: Awaitable[T]) -> T:
    """Await a load; re-label its LoadError with which input it was."""
    try:
        return await load
    except LoadError as exc:
        raise LoadError(what, exc.reason) from exc


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 3)
