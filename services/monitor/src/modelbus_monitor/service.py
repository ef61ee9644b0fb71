"""The monitor's service layer: feeds events into per-model state, persists incidents, publishes.

Per-model work is serialised with a lock. A new incident is saved before its DriftDetected is
published and marked published after; an unpublished incident (a failed publish) is published
again by the next event for that model or at start-up, always with the same event id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import structlog

from modelbus_contracts import (
    FeatureStats,
    LabelObserved,
    ModelPromoted,
    ModelRolledBack,
    PredictionMade,
)
from modelbus_contracts.envelope import utcnow
from modelbus_platform.bus import Publisher

from .config import MonitorSettings
from .domain import DetectorConfig, Incident, ModelMonitor, Outcome
from .join import LabelPoint, PredictionPoint
from .metrics import MonitorMetrics
from .ports import IncidentStore, RegistryClient

log = structlog.get_logger(__name__)


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
    )


class MonitorService:
    def __init__(
        self,
        config: DetectorConfig,
        *,
        publisher: Publisher,
        incidents: IncidentStore,
        registry: RegistryClient,
        metrics: MonitorMetrics,
        registry_retry_s: float = 30.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.config = config
        self.publisher = publisher
        self.incidents = incidents
        self.registry = registry
        self.metrics = metrics
        self.registry_retry = timedelta(seconds=registry_retry_s)
        self.clock = clock
        self.models: dict[str, ModelMonitor] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._next_sync: dict[str, datetime] = {}

    # -- start-up -----------------------------------------------------------------------------

    async def rebuild(self) -> None:
        """Learn champions and references from the registry, then reload open incidents."""
        try:
            models = await self.registry.list_models()
        except Exception as exc:
            log.warning("monitor.rebuild_registry_unavailable", error=str(exc))
            models = []
        for model in models:
            if model.aliases.champion is not None:
                reference = await self._reference(model.name, model.aliases.champion)
                self._monitor(model.name).adopt(model.aliases.champion, reference)
        for incident in await self.incidents.open_incidents():
            monitor = self._monitor(incident.model_name)
            if monitor.incident is None:
                monitor.restore_incident(incident)
                self.metrics.open_incidents.labels(incident.model_name).set(1)
                await self._flush(monitor)
        log.info("monitor.rebuilt", models=len(self.models), open_incidents=self.open_count())

    # -- events -------------------------------------------------------------------------------

    async def on_prediction(self, event: PredictionMade) -> None:
        point = PredictionPoint(
            prediction_id=event.prediction_id,
            version=event.version,
            served_by=event.served_by,
            label=event.label,
            features=dict(event.features),
            event_id=event.event_id,
            at=self.clock(),
        )
        async with self._lock(event.model_name):
            monitor = await self._prepare(event.model_name)
            outcome = monitor.observe_prediction(point, self.clock(), event.correlation_id)
            await self._apply(monitor, outcome)

    async def on_label(self, event: LabelObserved) -> None:
        point = LabelPoint(event.prediction_id, event.label, event.event_id, self.clock())
        async with self._lock(event.model_name):
            monitor = await self._prepare(event.model_name)
            outcome = monitor.observe_label(point, self.clock())
            await self._apply(monitor, outcome)

    async def on_promoted(self, event: ModelPromoted) -> None:
        await self._serve(event.model_name, event.version, event, f"promoted: {event.reason}")

    async def on_rolled_back(self, event: ModelRolledBack) -> None:
        await self._serve(event.model_name, event.to_version, event, f"rolled back: {event.reason}")

    async def _serve(
        self, name: str, version: int, event: ModelPromoted | ModelRolledBack, reason: str
    ) -> None:
        async with self._lock(name):
            monitor = self._monitor(name)
            await self._flush(monitor)
            reference = await self._reference(name, version)
            closed = monitor.serve(
                version,
                reference,
                self.clock(),
                event_id=str(event.event_id),
                occurred_at=event.occurred_at,
                reason=reason,
            )
            self._next_sync.pop(name, None)
            if closed is not None:
                await self.incidents.save(closed)
                self.metrics.incidents.labels(name, "closed").inc()
                self.metrics.open_incidents.labels(name).set(0)
                log.info("incident.closed", incident_id=closed.incident_id, by_version=version)
            log.info("monitor.serving", model=name, version=version, reference=bool(reference))

    # -- queries ------------------------------------------------------------------------------

    def status(self, name: str) -> dict[str, Any] | None:
        monitor = self.models.get(name)
        return monitor.status() if monitor else None

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
        await self._flush(monitor)
        await self._sync(monitor)
        return monitor

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
                model = await self.registry.get_model(monitor.model_name)
            except Exception as exc:
                log.warning("registry.unavailable", model=monitor.model_name, error=str(exc))
                return
            version = model.aliases.champion if model else None
            if version is None:
                return
        monitor.adopt(version, await self._reference(monitor.model_name, version))

    async def _reference(self, name: str, version: int) -> dict[str, FeatureStats] | None:
        try:
            view = await self.registry.get_version(name, version)
        except Exception as exc:
            log.warning(
                "registry.reference_unavailable", model=name, version=version, error=str(exc)
            )
            return None
        return dict(view.reference) if view else None

    async def _apply(self, monitor: ModelMonitor, outcome: Outcome) -> None:
        name = monitor.model_name
        self._count(name, outcome)
        if outcome.opened is not None:
            await self._open(monitor, outcome.opened)
        elif monitor.incident is not None and any(
            d == "suppressed_open" for _, d in outcome.alarms
        ):
            await self.incidents.save(monitor.incident)
        if outcome.quality is not None:
            await self.publisher.publish(outcome.quality)
            self.metrics.quality_alerts.labels(name, outcome.quality.check).inc()
            log.warning("quality.alert", model=name, check=outcome.quality.check)

    def _count(self, name: str, outcome: Outcome) -> None:
        m = self.metrics
        if outcome.joined is not None:
            m.joined_pairs.labels(name).inc()
        if outcome.ignored is not None:
            m.ignored.labels(name, outcome.ignored).inc()
        for reason, n in outcome.evicted.items():
            m.evicted_pending.labels(name, reason).inc(n)
        for alarm, disposition in outcome.alarms:
            m.drift_alarms.labels(name, alarm.detector, alarm.feature, disposition).inc()
            if disposition != "opened":
                m.suppressed_alarms.labels(name, disposition.removeprefix("suppressed_")).inc()
                log.info("drift.suppressed", model=name, feature=alarm.feature, why=disposition)
        monitor = self.models[name]
        if monitor.error.observations:
            m.error_rate.labels(name).set(float(monitor.error.adwin.estimation))

    async def _open(self, monitor: ModelMonitor, incident: Incident) -> None:
        await self.incidents.save(incident)
        self.metrics.incidents.labels(monitor.model_name, "opened").inc()
        self.metrics.open_incidents.labels(monitor.model_name).set(1)
        log.warning(
            "incident.opened",
            model=monitor.model_name,
            incident_id=incident.incident_id,
            **incident.evidence,
        )
        await self._flush(monitor)

    async def _flush(self, monitor: ModelMonitor) -> None:
        """Publish the open incident's DriftDetected if that has not happened yet."""
        incident = monitor.incident
        if incident is None or incident.published:
            return
        await self.publisher.publish(incident.drift_event())
        incident.published = True
        await self.incidents.save(incident)
