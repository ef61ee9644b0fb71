"""The deployer's live side: follow rollouts and freshly promoted champions on live traffic.

Batches of PredictionMade, LabelObserved, ModelLoadFailed and ScoringFailed (consumer group
``deployer-watch``) feed the ``LiveTracker``; the windows are checkpointed to the
``LiveStatsStore`` (``checkpoints``: restored on a stage's first batch after a restart, a
re-delivered event is never counted twice); after each batch every touched model's live stage
is judged by the pure rules in ``rollout``. A stage that passes or fails is advanced by
compare-and-set on the decision document (its stage number), so two replicas never both decide:

- shadow / canary step passed -> the next canary step or ``promote`` (a ModelEvaluated);
- shadow / canary failed -> ``reject`` (a ModelEvaluated with the failed rules' numbers);
- watch failed -> ModelRollbackRequested (deterministic id per (model, version): one per
  promotion however often it is re-decided); watch passed -> the watch is closed;
- after the watch, a ModelLoadFailed of a version the deployer promoted (a champion no scorer
  can load: its artifact changed, lost or no longer trusted) -> ModelRollbackRequested too.

Each event is written with the compare-and-set that decides it (the outbox), so it is emitted
exactly when the decision is stored, and published by the relay; its id is deterministic.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import structlog

from modelbus_contracts import (
    Event,
    LabelObserved,
    ModelLoadFailed,
    ModelRollbackRequested,
    PredictionMade,
    Rollout,
    ScoringFailed,
)
from modelbus_platform.offsets import NoOffsets, StateOffsets
from modelbus_platform.outbox import Notifier

from .checkpoints import LiveCheckpoints
from .config import DeployerSettings
from .ports import DecisionStore, LiveStatsStore
from .rollout import LiveVerdict, Next, after_pass, judge_live
from .service import STAGE_IDS, DeployerService, history_entry, stage_event
from .watch import ActiveStage, LiveTracker

log = structlog.get_logger(__name__)


def rollback_event_id(model_name: str, from_version: int) -> uuid.UUID:
    return uuid.uuid5(STAGE_IDS, f"{model_name}/{from_version}/rollback")


def active_stage(doc: dict[str, Any] | None) -> ActiveStage | None:
    if doc is None or doc.get("live") not in ("shadow", "canary", "watch"):
        return None
    return ActiveStage(
        model_name=doc["model_name"],
        version=int(doc["version"]),
        stage_no=int(doc.get("stage") or 0),
        stage=doc["live"],
        champion_version=doc.get("champion_version"),
        holdout_accuracy=doc.get("holdout_accuracy"),
        doc=doc,
    )


class LiveService:
    def __init__(
        self,
        *,
        settings: DeployerSettings,
        decisions: DecisionStore,
        events: Notifier,
        deployer: DeployerService,
        stats: LiveStatsStore,
        tracker: LiveTracker | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        offsets: StateOffsets | None = None,
    ) -> None:
        self.settings = settings
        self.decisions = decisions
        self.events = events
        self.deployer = deployer
        self.tracker = tracker or LiveTracker()
        self.checkpoints = LiveCheckpoints(
            stats,
            self.tracker,
            every_s=settings.live_checkpoint_s,
            guard=settings.live_replay_guard,
            monotonic=monotonic,
        )
        self.monotonic = monotonic
        # the watch group's offsets: committed once the windows that counted them are saved
        self.offsets = offsets or NoOffsets()
        self._active: dict[str, tuple[float, ActiveStage | None]] = {}

    # -- which stage each model is in --------------------------------------------------------

    def note(self, doc: dict[str, Any]) -> None:
        """This replica just stored ``doc``: follow it at once (no store round trip)."""
        self._active[doc["model_name"]] = (self.monotonic(), active_stage(doc))

    async def active(self, model_name: str) -> ActiveStage | None:
        cached = self._active.get(model_name)
        if cached is not None and self.monotonic() - cached[0] < self.settings.active_refresh_s:
            return cached[1]
        stage = active_stage(await self.decisions.active(model_name))
        self._active[model_name] = (self.monotonic(), stage)
        return stage

    # -- telemetry ---------------------------------------------------------------------------

    async def handle(self, events: list[Event]) -> dict[str, str]:
        """Count a batch, checkpoint it, then judge every model it touched (a re-delivered
        event is not counted again, but its model is judged again: the decision it led to may
        not have been made). Returns model -> outcome."""
        touched: set[str] = set()
        for event in events:
            if isinstance(event, ScoringFailed) and event.served_by != "shadow":
                continue  # a bad request, or an arm the scorer answers with the fallback
            event_id = str(event.event_id)
            if isinstance(event, LabelObserved):
                if self.checkpoints.replayed(event_id):
                    touched.add(event.model_name)
                    continue
                for key in self.tracker.label(event):
                    self.checkpoints.counted(key, event_id)
                    touched.add(event.model_name)
                continue
            stage = await self.active(event.model_name)
            if stage is None:
                if isinstance(event, ModelLoadFailed):
                    await self._unloadable(event)
                continue
            await self.checkpoints.restore(stage.key)
            if self.checkpoints.replayed(event_id):
                touched.add(event.model_name)
            elif self._count(event, stage):
                self.checkpoints.counted(stage.key, event_id)
                touched.add(event.model_name)
        if await self.checkpoints.maybe_save():
            self.offsets.commit_after_batch()  # the windows hold this batch: commit it
        return {name: await self.evaluate(name) for name in sorted(touched)}

    def _count(self, event: Event, stage: ActiveStage) -> bool:
        if isinstance(event, PredictionMade):
            return self.tracker.prediction(event, stage)
        if isinstance(event, ModelLoadFailed):
            return self.tracker.load_failed(event, stage)
        if isinstance(event, ScoringFailed):
            return self.tracker.scoring_failed(event, stage)
        return False

    async def flush(self) -> bool:
        """Checkpoint what was counted since the last checkpoint, between two batches, and
        commit the offsets it covers (also what was read and counted nowhere: a batch of
        models without a live stage). Run every ``live_checkpoint_s`` (at least 1 s) and at
        shutdown, before the consumers stop, so the group's commits follow a quiet stream
        too and not only the next batch."""
        async with self.offsets.paused() as covered:
            saved = await self.checkpoints.save()
        return saved and await self.offsets.commit(covered)

    async def flush_forever(self, period_s: float) -> None:
        while True:
            await asyncio.sleep(period_s)
            try:
                await self.flush()
            except Exception as exc:  # retried next period: the counts stay in memory
                log.warning("live.flush_failed", error=str(exc))

    async def close(self) -> None:
        await self.flush()

    async def evaluate(self, model_name: str) -> str:
        stage = await self.active(model_name)
        if stage is None or stage.key not in self.tracker.windows:
            return "idle"
        policy = await self.deployer.policy_for(model_name)
        window = self.tracker.windows[stage.key]
        metric = policy.live_metric(stage.task)
        verdict = judge_live(
            window,
            policy,
            stage.stage,
            stage.holdout_value(metric),
            stage.who,
            stage.holdout_rows,
            metric=metric,
        )
        if verdict.outcome == "wait":
            return "wait"
        if stage.stage == "watch":
            outcome = await self._end_watch(stage, verdict)
        else:
            outcome = await self._step(stage, verdict)
        self.tracker.forget(stage.key)
        await self.checkpoints.drop(stage.key)
        return outcome

    # -- decisions ---------------------------------------------------------------------------

    async def _step(self, stage: ActiveStage, verdict: LiveVerdict) -> str:
        doc = stage.doc
        if verdict.outcome == "pass":
            policy = await self.deployer.policy_for(stage.model_name)
            nxt = after_pass(policy, Rollout.model_validate(doc["rollout"]))
        else:
            nxt = Next("reject")
        event = stage_event(
            doc,
            self.settings.service_name,
            nxt,
            stage.stage_no + 1,
            reasons=verdict.reasons,
            gates=verdict.gates,
            live_metrics=verdict.evidence,
        )
        stored = await self.deployer.advance(doc, nxt, event, verdict.evidence)
        return self._after(stage, stored, nxt.decision)

    async def _end_watch(self, stage: ActiveStage, verdict: LiveVerdict) -> str:
        doc, now = stage.doc, self.deployer.now()
        reason = "; ".join(verdict.reasons)
        watch: dict[str, Any] = {"status": "passed", "reason": reason, "at": now.isoformat()}
        events = []
        if verdict.outcome == "fail":
            request = ModelRollbackRequested(
                event_id=rollback_event_id(stage.model_name, stage.version),
                producer=self.settings.service_name,
                correlation_id=doc["correlation_id"],
                causation_id=doc["event_id"],
                model_name=stage.model_name,
                from_version=stage.version,
                to_version=stage.champion_version,
                reason=reason[:2000],
                evidence=verdict.evidence,
            )
            events.append(request)
            watch.update(status="rollback_requested", event_id=str(request.event_id))
            log.warning(
                "watch.rollback_requested",
                model_name=stage.model_name,
                version=stage.version,
                reason=reason,
                evidence=verdict.evidence,
            )
        what = "rollback_requested" if verdict.outcome == "fail" else "watch_passed"
        entry = history_entry(now, what, verdict.reasons, verdict.evidence)
        fields = {
            "stage": stage.stage_no + 1,
            "live": "none",
            "watch": {**watch, "evidence": verdict.evidence},
            "history": [*(doc.get("history") or []), entry],
        }
        stored = await self.decisions.transition(
            stage.model_name, stage.version, stage.stage_no, fields, events=events
        )
        if stored is not None and events:
            await self.events.notify()
        return self._after(stage, stored, what)

    async def _unloadable(self, event: ModelLoadFailed) -> bool:
        """A scorer cannot load a version the deployer promoted, after its watch: a champion
        nobody can serve (the scorers keep answering with the last good model) is rolled back
        at once, with the scorer's reason. The registry rolls back only if the version is
        still the champion (``from_version``), so a stale failure changes nothing; the
        request's id is the watch's (one rollback per promotion however often it fails)."""
        doc = await self.decisions.get(event.model_name, event.version)
        if doc is None or doc.get("decision") != "promote" or doc.get("unloadable"):
            return False
        if (doc.get("watch") or {}).get("status") == "rollback_requested":
            return False  # its watch asked for it already
        reason = (f"champion v{event.version} cannot be loaded by {event.instance}: {event.error}")[
            :2000
        ]
        request = ModelRollbackRequested(
            event_id=rollback_event_id(event.model_name, event.version),
            producer=self.settings.service_name,
            correlation_id=doc["correlation_id"],
            causation_id=event.event_id,
            model_name=event.model_name,
            from_version=event.version,
            to_version=doc.get("champion_version"),
            reason=reason,
        )
        now = self.deployer.now()
        stage = int(doc.get("stage") or 0)
        fields = {
            "stage": stage + 1,
            "unloadable": {
                "instance": event.instance,
                "error": event.error[:2000],
                "at": now.isoformat(),
                "event_id": str(request.event_id),
            },
            "history": [
                *(doc.get("history") or []),
                history_entry(now, "rollback_requested", [reason], {}),
            ],
        }
        stored = await self.decisions.transition(
            event.model_name, event.version, stage, fields, events=[request]
        )
        if stored is None:
            return False
        await self.events.notify()
        log.warning(
            "champion.unloadable_rollback_requested",
            model_name=event.model_name,
            version=event.version,
            reason=reason,
        )
        return True

    def _after(self, stage: ActiveStage, stored: dict[str, Any] | None, what: str) -> str:
        if stored is None:  # another replica (or request) moved this decision first
            self._active.pop(stage.model_name, None)
            return "lost_race"
        self.note(stored)
        log.info("live.decided", model_name=stage.model_name, version=stage.version, what=what)
        return what
