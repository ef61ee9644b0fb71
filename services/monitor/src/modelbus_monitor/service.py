"""The monitor's service layer: feeds batches of telemetry (as columns) into per-model state
(``domain.ModelMonitor``: the signal kernel and the policy), persists incidents, publishes.

Telemetry enters only through ``on_prediction_batch`` and ``on_label_batch``, split by model.
Per-model work is serialised with a lock. A new incident (or a re-emission of an open one) is
saved with its DriftDetected in the same write (the outbox), and the relay publishes it.
``tick()`` (run periodically) re-emits persisting incidents, checkpoints detector windows and
stores the daily windows.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import structlog

from modelbus_contracts import (
    Columns,
    Event,
    FeatureStats,
    LabelObserved,
    ModelEvaluated,
    ModelPolicyChanged,
    ModelPromoted,
    ModelRolledBack,
    PredictionMade,
)
from modelbus_contracts.envelope import utcnow
from modelbus_contracts.policy import PolicyView
from modelbus_platform.bus import Publisher
from modelbus_platform.offsets import NoOffsets, StateOffsets
from modelbus_platform.outbox import Notifier
from modelbus_platform.policies import Policies
from modelbus_platform.registry import Registry

from .config import DetectorConfig, MonitorSettings
from .daily import DailyFeature, Thresholds, compare, day_of, previous_day
from .domain import BatchOutcome, ModelMonitor, RowOutcome
from .metrics import MonitorMetrics
from .outcomes import Task
from .policy import Incident
from .ports import DailyStore, IncidentStore, StateStore

log = structlog.get_logger(__name__)
T = TypeVar("T")


def detector_config(settings: MonitorSettings) -> DetectorConfig:
    return DetectorConfig(
        delta=settings.adwin_delta,
        error_min_observations=settings.error_min_observations,
        feature_drift_enabled=settings.feature_drift_enabled,
        feature_min_observations=settings.feature_min_observations,
        cooldown_s=settings.drift_cooldown_s,
        join_max_pending=settings.join_max_pending,
        join_max_wait_s=settings.join_max_wait_s,
        producer=settings.service_name,
        feature_detector=settings.feature_detector,
        error_detector=settings.error_detector,
        scale_drift_enabled=settings.scale_drift_enabled,
        scale_detector=settings.scale_detector,
        overrides=settings.detector_overrides,
        alpha=settings.confirm_alpha,
        reference_size=settings.reference_size,
        window_size=settings.window_size,
        confirm_patience=settings.confirm_patience,
        retrigger_s=settings.incident_retrigger_s,
        recovery_tolerance=settings.recovery_tolerance,
        recovery_min_points=settings.recovery_min_points,
        incident_max_attempts=settings.incident_max_attempts,
        outlier_z=settings.outlier_z,
        daily_enabled=settings.daily_enabled,
        category_window=settings.category_window,
        recovery_rmse_tolerance=settings.recovery_rmse_tolerance,
    )


class MonitorService:
    def __init__(
        self,
        config: DetectorConfig,
        *,
        publisher: Publisher,
        events: Notifier,
        incidents: IncidentStore,
        registry: Registry,
        metrics: MonitorMetrics,
        registry_retry_s: float = 30.0,
        clock: Callable[[], datetime] = utcnow,
        states: StateStore | None = None,
        daily: DailyStore | None = None,
        checkpoint_s: float = 60.0,
        thresholds: Thresholds | None = None,
        policies: Policies | None = None,
        offsets: StateOffsets | None = None,
    ) -> None:
        self.config = config
        self.policies = policies
        self._policy_seen: set[str] = set()
        self.publisher = publisher
        self.events = events
        self.incidents = incidents
        self.registry = registry
        self.metrics = metrics
        self.registry_retry = timedelta(seconds=registry_retry_s)
        self.clock = clock
        self.models: dict[str, ModelMonitor] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._next_sync: dict[str, datetime] = {}
        self.states = states
        self.daily = daily
        self.checkpoint_every = timedelta(seconds=checkpoint_s) if checkpoint_s > 0 else None
        self._next_checkpoint: datetime | None = None
        self.thresholds = thresholds or Thresholds()
        # the telemetry group's offsets, committed as far as a checkpoint covers
        self.offsets = offsets or NoOffsets()
        self._unsaved_daily: list[Any] = []  # daily windows a failed checkpoint did not save

    # -- start-up -----------------------------------------------------------------------------

    async def rebuild(self) -> None:
        """Learn champions and references from the registry, then reload open incidents."""
        try:
            models = await self.registry.models()
        except Exception as exc:
            log.warning("monitor.rebuild_registry_unavailable", error=str(exc))
            models = []
        for model in models:
            if model.aliases.champion is not None:
                reference, task = await self._reference(model.name, model.aliases.champion)
                monitor = self._monitor(model.name)
                monitor.adopt(model.aliases.champion, reference, task)
                await self._restore(monitor)
        for incident in await self.incidents.open_incidents():
            monitor = self._monitor(incident.model_name)
            if monitor.incident is None:
                monitor.restore_incident(incident)
                self.metrics.open_incidents.labels(incident.model_name).set(1)
                await self._emit(monitor)  # one saved by an older version before it published
        log.info("monitor.rebuilt", models=len(self.models), open_incidents=self.open_count())

    # -- events -------------------------------------------------------------------------------

    async def on_prediction_batch(self, batch: Columns[PredictionMade]) -> None:
        """A batch of predictions: per model, one lock, one registry check, one kernel pass and
        one metrics update."""
        for name, rows in _rows_by_model(batch.model_name).items():
            async with self._lock(name):
                monitor = await self._prepare(name)
                outcome = monitor.observe_predictions(
                    self.clock(),
                    prediction_ids=_pick(batch.prediction_id, rows),
                    versions=_pick(batch.version, rows),
                    served_by=_pick(batch.served_by, rows),
                    labels=_pick(batch.label, rows),
                    values=_pick(batch.value, rows) if monitor.task == "regression" else None,
                    features=_pick(batch.features, rows),
                    event_ids=_pick(batch.event_id, rows),
                    correlation_ids=_pick(batch.correlation_id, rows),
                )
                await self._apply_batch(monitor, outcome)
                await self._advance(monitor)

    async def on_label_batch(self, batch: Columns[LabelObserved]) -> None:
        for name, rows in _rows_by_model(batch.model_name).items():
            async with self._lock(name):
                monitor = await self._prepare(name)
                outcome = monitor.observe_labels(
                    self.clock(),
                    prediction_ids=_pick(batch.prediction_id, rows),
                    labels=_pick(batch.label, rows),
                    event_ids=_pick(batch.event_id, rows),
                )
                await self._apply_batch(monitor, outcome)
                await self._advance(monitor)

    # -- background work ----------------------------------------------------------------------

    async def tick(self) -> None:
        """Periodic: read changed policies, move incidents on, checkpoint detectors, store daily
        windows."""
        for name in list(self.models):
            await self._refresh_policy(name)  # a failed read keeps the last policy
            async with self._lock(name):
                monitor = self.models[name]
                try:
                    await self._advance(monitor)
                except Exception as exc:  # retried on a later tick
                    log.warning("incident.retrigger_failed", model=name, error=str(exc))
        now = self.clock()
        due = self._next_checkpoint is None or now >= self._next_checkpoint
        if self.checkpoint_every is not None and due:
            self._next_checkpoint = now + self.checkpoint_every
            await self.checkpoint()

    async def checkpoint(self) -> int:
        """Save every model's state (detector windows, join buffers, counts) and the changed
        daily windows as of one moment between two telemetry batches, then commit the
        telemetry offsets that moment covers: a crash replays exactly what the checkpoint
        lacks. A failed save commits nothing (the next checkpoint covers it). Returns how many
        models were saved."""
        now = self.clock()
        async with self.offsets.paused() as covered:
            snapshots = []
            for name in list(self.models) if self.states is not None else ():
                async with self._lock(name):
                    snapshots.append(self.models[name].snapshot(now))
            windows = self._drain_daily()
            daily = [w.doc() for w in windows]
        saved = 0
        for snapshot in snapshots:
            try:
                await self.states.save(snapshot)  # type: ignore[union-attr]
                saved += 1
            except Exception as exc:
                log.warning("checkpoint.failed", model=snapshot["_id"], error=str(exc))
        complete = saved == len(snapshots)
        if daily and self.daily is not None:
            try:
                await self.daily.save(daily)
            except Exception as exc:
                complete = False
                self._unsaved_daily = windows  # saved by the next checkpoint
                log.warning("checkpoint.daily_failed", error=str(exc))
        committed = complete and await self.offsets.commit(covered)
        log.info("monitor.checkpointed", models=saved, daily=len(daily), committed=committed)
        return saved

    def _drain_daily(self) -> list[Any]:
        windows, self._unsaved_daily = self._unsaved_daily, []
        for monitor in self.models.values():
            if monitor.daily is not None:
                windows += monitor.daily.drain()
        for window in windows:
            window.dirty = False
        return windows

    async def _daily_docs(self, name: str, day: str) -> dict[str, dict[str, Any]]:
        """Feature -> the day's window: the stored one, or the newer one in memory (not saved
        until the next checkpoint)."""
        stored = await self.daily.day(name, day) if self.daily else []
        monitor = self.models.get(name)
        book = monitor.daily if monitor is not None else None
        windows = [*self._unsaved_daily]
        if book is not None:
            windows += [*book.finished, *book.features.values()]
        memory = [w.doc() for w in windows if w.model_name == name and w.day == day]
        return {d["feature"]: d for d in stored + memory}

    async def daily_report(self, name: str, day: str | None = None) -> dict[str, Any]:
        """Per feature: the day's numbers, PSI and KS vs the previous day and vs the reference."""
        day = day or day_of(self.clock())
        prev = previous_day(day)
        today = list((await self._daily_docs(name, day)).values())
        before = await self._daily_docs(name, prev)
        features = {}
        for doc in sorted(today, key=lambda d: d["feature"]):
            previous = before.get(doc["feature"])
            features[doc["feature"]] = compare(
                DailyFeature.from_doc(doc),
                DailyFeature.from_doc(previous) if previous else None,
                self.thresholds,
            )
        t = self.thresholds
        return {
            "model_name": name,
            "day": day,
            "previous_day": prev,
            "thresholds": {
                "psi_warn": t.psi_warn,
                "psi_drift": t.psi_drift,
                "ks_alpha": t.ks_alpha,
            },
            "features": features,
            "drifted": sorted(f for f, v in features.items() if v["status"] == "drift"),
            **self._live_summary(name),
        }

    def _live_summary(self, name: str) -> dict[str, Any]:
        """The serving version's task, its live numbers (accuracy, or RMSE and MAE) and its
        category features' shares against the reference with their last chi-square test (the
        daily windows hold the number features)."""
        monitor = self.models.get(name)
        if monitor is None:
            return {"task": None, "performance": {}, "categories": {}}
        categories = {
            feature: {k: state[k] for k in ("reference_shares", "shares", "last_test", "confirmed")}
            for feature, state in monitor.kernel.detectors().items()
            if state.get("kind") == "category"
        }
        return {
            "task": monitor.task,
            "performance": monitor.kernel.performance(),
            "categories": categories,
        }

    async def on_promoted(self, event: ModelPromoted) -> None:
        await self._serve(event.model_name, event.version, event, f"promoted: {event.reason}")

    async def on_evaluated(self, event: ModelEvaluated) -> None:
        """A rejected retrain of an open incident: its next attempt need not wait
        ``retrigger_s`` (it still waits for new labelled data)."""
        if event.decision != "reject":
            return
        name = event.model_name
        async with self._lock(name):
            monitor = self.models.get(name)
            if monitor is None or monitor.incident is None:
                return
            incident = monitor.incident
            if not monitor.policy.on_rejected(
                str(event.correlation_id), event.version, event.reasons, self.clock()
            ):
                return
            await self._save(incident)
            log.info(
                "incident.retrain_rejected", incident_id=incident.incident_id, version=event.version
            )
            await self._advance(monitor)

    async def resolve_incident(self, incident_id: str, actor: str, reason: str) -> Incident:
        """An operator closes an open incident (``resolved``, with who and why): saved with its
        IncidentUpdated. ``LookupError`` if unknown, ``ValueError`` if not open here."""
        stored = await self.incidents.get(incident_id)
        if stored is None:
            raise LookupError(incident_id)
        async with self._lock(stored.model_name):
            monitor = self.models.get(stored.model_name)
            closed = None
            if monitor is not None:
                closed = monitor.policy.resolve(incident_id, self.clock(), actor, reason)
            if closed is None:
                raise ValueError(
                    f"incident {incident_id} is {stored.status}, not open on this monitor"
                )
            await self._closed(stored.model_name, closed)
            return closed

    async def on_rolled_back(self, event: ModelRolledBack) -> None:
        await self._serve(event.model_name, event.to_version, event, f"rolled back: {event.reason}")

    async def _serve(
        self, name: str, version: int, event: ModelPromoted | ModelRolledBack, reason: str
    ) -> None:
        async with self._lock(name):
            monitor = self._monitor(name)
            if not await self._confirmed(monitor, version, event):
                return
            reference, task = await self._reference(name, version)
            if task is None and event.signature is not None:
                task = event.signature.task
            closed = monitor.serve(
                version,
                reference,
                self.clock(),
                event_id=str(event.event_id),
                occurred_at=event.occurred_at,
                reason=reason,
                task=task,
            )
            self._next_sync.pop(name, None)
            if closed is not None:
                await self._closed(name, closed)
            elif monitor.incident is not None and monitor.incident.state == "recovering":
                await self._save(monitor.incident)
                log.info(
                    "incident.recovering", incident_id=monitor.incident.incident_id, version=version
                )
            log.info("monitor.serving", model=name, version=version, reference=bool(reference))

    async def _confirmed(
        self, monitor: ModelMonitor, version: int, event: ModelPromoted | ModelRolledBack
    ) -> bool:
        """The registry holds the truth, the event only notifies: a promotion or a rollback is
        acted on only when the registry says ``version`` is the champion now (as the scorer
        re-reads it), so a forged ModelPromoted cannot close an incident or move what is
        watched. A stale one (a later promotion already happened) is skipped the same way:
        its successor's event follows. If the registry cannot be reached the event is taken
        as it is, logged: watching the right version matters more than that narrow window."""
        name = monitor.model_name
        try:
            model = await self.registry.model(name)
        except Exception as exc:
            log.warning("registry.unavailable", model=name, error=str(exc), unconfirmed=version)
            return True
        champion = model.aliases.champion if model is not None else None
        if champion == version:
            return True
        monitor.policy.counts["claims_not_confirmed"] += 1
        log.warning(
            "monitor.claim_not_confirmed",
            model=name,
            version=version,
            champion=champion,
            event_id=str(event.event_id),
            event_type=event.event_type,
        )
        return False

    # -- queries ------------------------------------------------------------------------------

    def status(self, name: str) -> dict[str, Any] | None:
        monitor = self.models.get(name)
        return monitor.status() if monitor else None

    def history(self, name: str) -> list[list[float]]:
        monitor = self.models.get(name)
        return [list(h) for h in monitor.history] if monitor else []

    def open_count(self) -> int:
        return sum(1 for m in self.models.values() if m.incident is not None)

    async def list_incidents(self, model_name: str | None, limit: int) -> list[Incident]:
        return await self.incidents.list(model_name, limit)

    async def get_incident(self, incident_id: str) -> Incident | None:
        return await self.incidents.get(incident_id)

    # -- internals ----------------------------------------------------------------------------

    def _monitor(self, name: str) -> ModelMonitor:
        if name not in self.models:
            self.models[name] = ModelMonitor(name, self.config)
        return self.models[name]

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def _prepare(self, name: str) -> ModelMonitor:
        monitor = self._monitor(name)
        await self._sync(monitor)
        if self.policies is not None and name not in self._policy_seen:
            # once per model: later revisions come from the tick and ModelPolicyChanged, so
            # the batch path never waits on the registry again
            self._policy_seen.add(name)
            self._use_policy(monitor, await self.policies.view(name))
        return monitor

    def _use_policy(self, monitor: ModelMonitor, view: PolicyView) -> None:
        if monitor.apply_policy(view.revision, view.policy.monitoring):
            log.info("monitor.policy_applied", model=monitor.model_name, revision=view.revision)

    async def _refresh_policy(self, name: str) -> None:
        """The model's live monitoring policy, read outside the model's lock (a registry read
        at most every ``policy_ttl_s``, at once after ModelPolicyChanged), applied under it."""
        if self.policies is None or name not in self.models:
            return
        view = await self.policies.view(name)
        async with self._lock(name):
            self._use_policy(self.models[name], view)

    async def on_policy_changed(self, event: ModelPolicyChanged) -> None:
        if self.policies is None:
            return
        self.policies.invalidate(event.model_name)
        await self._refresh_policy(event.model_name)

    async def _sync(self, monitor: ModelMonitor) -> None:
        """Fill a missing serving version or reference from the registry, rate-limited."""
        if monitor.serving_version is not None and monitor.reference:
            return
        now = self.clock()
        if now < self._next_sync.get(monitor.model_name, now):
            return
        self._next_sync[monitor.model_name] = now + self.registry_retry
        version = monitor.serving_version
        if version is None:
            try:
                model = await self.registry.model(monitor.model_name)
            except Exception as exc:
                log.warning("registry.unavailable", model=monitor.model_name, error=str(exc))
                return
            version = model.aliases.champion if model else None
            if version is None:
                return
        reference, task = await self._reference(monitor.model_name, version)
        monitor.adopt(version, reference, task)
        if monitor.reference:
            await self._restore(monitor)

    async def _reference(
        self, name: str, version: int
    ) -> tuple[dict[str, FeatureStats] | None, Task | None]:
        """The version's reference and its task (its signature's; no signature: binary)."""
        try:
            view = await self.registry.version(name, version)
        except Exception as exc:
            log.warning(
                "registry.reference_unavailable", model=name, version=version, error=str(exc)
            )
            return None, None
        if view is None:
            return None, None
        task: Task = view.signature.task if view.signature is not None else "binary"
        return dict(view.reference), task

    async def _apply_batch(self, monitor: ModelMonitor, outcome: BatchOutcome) -> None:
        alarms: Counter[tuple[str, str, str]] = Counter()
        for row in outcome.notable():
            for alarm, disposition in row.alarms:
                alarms[(alarm.detector, alarm.feature, disposition)] += 1
            await self._apply(monitor, row)
        self._count(monitor, outcome, alarms)

    async def _apply(self, monitor: ModelMonitor, row: RowOutcome) -> None:
        name = monitor.model_name
        for alarm, disposition in row.alarms:
            if disposition != "opened":
                log.info("drift.suppressed", model=name, feature=alarm.feature, why=disposition)
        if row.opened is not None:
            await self._open(monitor, row.opened)
        elif monitor.incident is not None and any(d == "suppressed_open" for _, d in row.alarms):
            await self._save(monitor.incident)
        if row.quality is not None:
            await self.publisher.publish(row.quality)
            self.metrics.quality_alerts.labels(name, row.quality.check).inc()
            log.warning("quality.alert", model=name, check=row.quality.check)

    def _count(
        self,
        monitor: ModelMonitor,
        outcome: BatchOutcome,
        alarms: Counter[tuple[str, str, str]],
    ) -> None:
        """Metrics for a whole batch at once: one labelled-metric look-up per batch, not per
        event."""
        m, name = self.metrics, monitor.model_name
        if outcome.joined:
            m.joined_pairs.labels(name).inc(outcome.joined)
        for reason, n in outcome.ignored.items():
            m.ignored.labels(name, reason).inc(n)
        for reason, n in outcome.evicted.items():
            m.evicted_pending.labels(name, reason).inc(n)
        for (detector, feature, disposition), n in alarms.items():
            m.drift_alarms.labels(name, detector, feature, disposition).inc(n)
            if disposition != "opened":
                m.suppressed_alarms.labels(name, disposition.removeprefix("suppressed_")).inc(n)
        rate = monitor.error_rate()
        if rate is not None:
            m.error_rate.labels(name).set(rate)

    async def _advance(self, monitor: ModelMonitor) -> None:
        """The open incident's progress: the next attempt emitted, a recovery closed, or a
        change of state saved."""
        name = monitor.model_name
        step = monitor.advance(self.clock())
        if step.closed is not None:
            await self._closed(name, step.closed)
        elif step.changed is not None:
            await self._save(step.changed)
            log.warning(
                "incident.needs_human",
                model=name,
                incident_id=step.changed.incident_id,
                attempts=step.changed.attempts,
                metric=step.changed.metric,
                live_value=step.changed.live_value,
                baseline_value=step.changed.baseline_value,
            )
        elif step.event is not None:
            assert monitor.incident is not None
            await self._emit(monitor)
            self.metrics.incidents.labels(name, "retriggered").inc()
            log.warning(
                "incident.retriggered",
                model=name,
                incident_id=monitor.incident.incident_id,
                attempt=step.event.attempt,
                reason=monitor.incident.transitions[-1]["reason"],
            )

    async def _closed(self, name: str, incident: Incident) -> None:
        await self._save(incident)
        self.metrics.incidents.labels(name, "closed").inc()
        self.metrics.open_incidents.labels(name).set(0)
        log.info(
            "incident.closed",
            incident_id=incident.incident_id,
            state=incident.state,
            by_version=incident.closed_by_version,
            reason=incident.transitions[-1]["reason"] if incident.transitions else None,
        )

    async def _restore(self, monitor: ModelMonitor) -> None:
        """Replay the detector checkpoint and resume today's daily windows."""
        if self.states is not None:
            try:
                snap = await self.states.load(monitor.model_name)
            except Exception as exc:
                log.warning("checkpoint.load_failed", model=monitor.model_name, error=str(exc))
                snap = None
            if snap:
                restored = monitor.restore(snap)
                log.info("monitor.restored", model=monitor.model_name, streams=restored)
        if self.daily is not None and monitor.daily is not None:
            day = day_of(self.clock())
            docs = await self.daily.day(monitor.model_name, day)
            monitor.daily.resume(day, [DailyFeature.from_doc(d) for d in docs])

    async def _open(self, monitor: ModelMonitor, incident: Incident) -> None:
        await self._emit(monitor)
        self.metrics.incidents.labels(monitor.model_name, "opened").inc()
        self.metrics.open_incidents.labels(monitor.model_name).set(1)
        log.warning(
            "incident.opened",
            model=monitor.model_name,
            incident_id=incident.incident_id,
            **incident.evidence,
        )

    async def _save(self, incident: Incident, *, events: Sequence[Event] = ()) -> None:
        """Save the incident with ``events`` and an IncidentUpdated per state change not yet
        published: one write, published by the relay."""
        updates = incident.updates(self.config.producer)
        await self.incidents.save(incident, events=[*events, *updates])
        if updates and not events:
            await self.events.notify()

    async def _emit(self, monitor: ModelMonitor) -> None:
        """Save the open incident with its due DriftDetected (opened or re-emitted): the state
        and the event are one write; the relay publishes it."""
        incident = monitor.incident
        if incident is None or incident.published:
            return
        incident.emitted(self.clock())  # it is in the outbox with the incident
        await self._save(incident, events=[incident.drift_event()])
        await self.events.notify()


def _rows_by_model(model_names: list[str]) -> dict[str, list[int] | None]:
    """The rows of each model, models in the order they first appear; None: every row."""
    if len(set(model_names)) <= 1:
        return {model_names[0]: None} if model_names else {}
    rows: dict[str, list[int]] = {}
    for i, name in enumerate(model_names):
        rows.setdefault(name, []).append(i)
    return dict(rows)


def _pick(column: list[T], rows: list[int] | None) -> list[T]:
    return column if rows is None else [column[i] for i in rows]
