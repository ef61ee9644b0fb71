"""The scorer's service layer: keep each champion loaded from the registry's truth, and score.

Loading is build + verify (sha256 against the registry record) + warm-up, then one swap. A load
that fails keeps the current model serving and is announced as ModelLoadFailed. Scoring reads
the serving pair once, predicts vectorised, falls back to the warm previous model if the current
one raises, and hands the batch to the prediction log.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import structlog

from modelbus_contracts import (
    Event,
    ModelLoadFailed,
    PredictionMade,
    PredictionSource,
    ScoringFailed,
    ScoringRequested,
)
from modelbus_contracts.api import VersionView
from modelbus_ml.serving import LoadFailed, Served
from modelbus_platform.artifacts import AllowPickle, ArtifactTrust, refuse_pickle
from modelbus_platform.bus import Publisher, RawRecord
from modelbus_platform.registry import Registry, RegistryUnavailable
from modelbus_platform.serving import load_version
from modelbus_platform.stores import ObjectStore

from .domain import (
    InvalidInput,
    ModelHolder,
    ModelUnavailable,
    Scored,
    Slots,
    features_to_matrix,
    serving_slots,
)
from .prediction_log import PredictionBatch, PredictionLog, random_ids
from .rollout import Challenger, route, shadow_scores
from .telemetry import ScorerMetrics

log = structlog.get_logger(__name__)
MAX_ERROR_CHARS = 2_000  # what an event's error keeps: a huge request's reason stays small

SyncOutcome = Literal["loaded", "reused_previous", "unchanged", "failed", "no_champion"]
# (the served version, the batch limit) -> (its input matrix, the request id)
Parser = Callable[[Served, int], tuple[np.ndarray, str | None]]


def derived_id(cause: Event, event_type: str, scope: str = "") -> uuid.UUID:
    """A deterministic id for an event that follows from ``cause``: a redelivered cause makes
    the same event again, and consumers dedupe it on ``event_id``."""
    return uuid.uuid5(cause.event_id, f"{event_type}/{scope}")


@dataclass
class Outbox:
    """What stream scoring of a micro-batch publishes: PredictionMade as pre-encoded records
    (one record batch), other events (ScoringFailed) through the bus."""

    events: list[Event] = field(default_factory=list)
    records: list[RawRecord] = field(default_factory=list)

    async def flush(self, publisher: Publisher) -> None:
        """Publish everything; raise the first failure (so the consumer retries the batch)."""
        if self.records:
            await publisher.publish_records(PredictionMade.topic, self.records)
        failures = [r for r in await publisher.publish_many(self.events) if r is not None]
        if failures:
            raise failures[0]


class SeenRequests:
    """The content of the stream requests seen lately, by event id (the newest ``capacity``).

    A stream prediction's id is derived from its request's ``event_id``, so a redelivery (same
    id, same content) makes the very same prediction and downstream dedupes it. A request that
    comes back under a known id with different content (model, request id or features) would
    be scored under the prediction id of the first: that is a conflict, refused as a
    ScoringFailed ``event_id_conflict`` instead. The memory is per scorer and bounded, as the
    bus's own dedupe is: an id older than the window is not remembered.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[uuid.UUID, int] = OrderedDict()

    def conflicts(self, event: ScoringRequested) -> bool:
        """Note ``event``; True if its id was seen before with other content."""
        content = hash((event.model_name, event.request_id, frozenset(event.features.items())))
        known = self._seen.get(event.event_id)
        if known is None:
            self._seen[event.event_id] = content
            if len(self._seen) > self.capacity:
                self._seen.popitem(last=False)
            return False
        return known != content


@dataclass(slots=True)  # per request: not frozen (a frozen init costs ~2x)
class ScoreResult:
    model_name: str
    scored: Scored
    prediction_ids: list[str]
    request_id: str | None


class ScorerService:
    def __init__(
        self,
        *,
        holder: ModelHolder,
        registry: Registry,
        store: ObjectStore,
        publisher: Publisher,
        metrics: ScorerMetrics,
        prediction_log: PredictionLog,
        producer: str,
        instance: str,
        max_instances: int,
        first_sync_wait_s: float = 10.0,
        seen_requests: int = 100_000,
        trust: ArtifactTrust | None = None,
        allow_pickle: AllowPickle = refuse_pickle,
    ) -> None:
        self.trust = trust or ArtifactTrust()
        self.allow_pickle = allow_pickle
        self.holder = holder
        self.registry = registry
        self.store = store
        self.publisher = publisher
        self.metrics = metrics
        self.prediction_log = prediction_log
        self.producer = producer
        self.instance = instance
        self.max_instances = max_instances
        self.first_sync_wait_s = first_sync_wait_s
        self.sync_attempted = False
        self.last_sync_ok = False
        self.synced = asyncio.Event()  # set once the registry has answered a full sync
        self._locks: dict[str, asyncio.Lock] = {}
        self._announced_failures: dict[str, tuple[int, str]] = {}
        self.challengers: dict[str, Challenger] = {}  # shadow / canary, per model
        self.seen = SeenRequests(seen_requests)  # stream requests by event id: conflicts

    # -- keeping models loaded ---------------------------------------------------------------

    async def sync_all(self) -> dict[str, SyncOutcome]:
        """Rebuild from the truth: every model the registry knows, at its champion."""
        try:
            names = await self.registry.model_names()
            outcomes: dict[str, SyncOutcome] = {}
            errors: list[Exception] = []
            for name in names:
                self.holder.know(name)
                try:
                    outcomes[name] = await self.sync_model(name)
                except RegistryUnavailable:
                    raise
                except Exception as exc:  # one model's trouble must not starve the others
                    log.warning("model.sync_failed", model=name, error=str(exc))
                    errors.append(exc)
            self.synced.set()
            if errors:
                raise errors[0]
            self.last_sync_ok = True
            return outcomes
        except Exception:
            self.last_sync_ok = False
            raise
        finally:
            self.sync_attempted = True

    async def sync_model(self, name: str, cause: Event | None = None) -> SyncOutcome:
        """Serve the registry's champion of ``name``. Idempotent: replays are no-ops. Raises
        only on transient trouble (registry or store unreachable) so the caller can retry."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            outcome = await self._sync_locked(name, cause)
            await self._sync_rollout(name, cause)
        self.metrics.syncs.labels(outcome).inc()
        return outcome

    async def _sync_rollout(self, name: str, cause: Event | None) -> None:
        """Load (or drop) the challenger the registry exposes in shadow or as a canary."""
        rollout = await self.registry.rollout(name)
        view = None
        if rollout is not None and rollout.mode != "none" and rollout.version is not None:
            view = await self.registry.version(name, rollout.version)
        if view is None or rollout is None or rollout.mode == "none":
            if self.challengers.pop(name, None) is not None:
                log.info("rollout.cleared", model=name)
            return
        existing = self.challengers.get(name)
        if existing is not None and existing.same_as(view.version, view.artifact.sha256):
            served = existing.served
        else:
            try:
                served = await self.load(view)
            except LoadFailed as exc:
                self.challengers.pop(name, None)
                await self._load_failed(name, view, str(exc), cause)
                return
        mode = rollout.mode
        self.challengers[name] = Challenger(
            served, mode, rollout.fraction, rollout.champion_version
        )
        log.info(
            "rollout.serving",
            model=name,
            version=view.version,
            mode=mode,
            fraction=rollout.fraction,
        )

    async def _sync_locked(self, name: str, cause: Event | None) -> SyncOutcome:
        view = await self.registry.champion(name)
        if view is None:
            return "no_champion"
        self.holder.know(name)
        slots = self.holder.get(name)
        sha = view.artifact.sha256
        if slots and slots.current and slots.current.same_as(view.version, sha):
            return "unchanged"
        if slots and slots.previous and slots.previous.same_as(view.version, sha):
            self._swap(name, slots.previous)
            return "reused_previous"
        try:
            served = await self.load(view)
        except LoadFailed as exc:
            await self._load_failed(name, view, str(exc), cause)
            return "failed"
        self._swap(name, served)
        return "loaded"

    async def load(self, view: VersionView) -> Served:
        """Fetch, verify, parse and warm up one version; ``LoadFailed`` if it cannot serve."""
        return await load_version(self.store, view, self.trust, self.allow_pickle)

    def _swap(self, name: str, served: Served) -> None:
        slots = self.holder.swap(name, served)
        self._announced_failures.pop(name, None)
        self.metrics.swaps.labels(name).inc()
        self.metrics.loaded_version.labels(name, "current").set(served.version)
        if slots.previous is not None:
            self.metrics.loaded_version.labels(name, "previous").set(slots.previous.version)
        log.info(
            "model.swapped",
            model=name,
            version=served.version,
            previous=slots.previous.version if slots.previous else None,
        )

    async def _load_failed(
        self, name: str, view: VersionView, error: str, cause: Event | None
    ) -> None:
        self.metrics.load_failures.labels(name).inc()
        slots = self.holder.get(name)
        serving = slots.current.version if slots and slots.current else None
        log.error(
            "model.load_failed",
            model=name,
            version=view.version,
            error=error,
            still_serving=serving,
        )
        key = (view.version, view.artifact.sha256)
        if cause is None and self._announced_failures.get(name) == key:
            return  # the periodic resync does not repeat an announcement
        self._announced_failures[name] = key
        data: dict[str, Any] = {
            "model_name": name,
            "version": view.version,
            "instance": self.instance,
            "error": error[:MAX_ERROR_CHARS],
        }
        if cause is not None:
            event_id = derived_id(cause, ModelLoadFailed.event_type, self.instance)
            event = cause.caused(ModelLoadFailed, producer=self.producer, event_id=event_id, **data)
        else:
            event = ModelLoadFailed(producer=self.producer, **data)
        await self.publisher.publish(event)

    # -- scoring -----------------------------------------------------------------------------

    def score(
        self,
        name: str,
        parse: Parser,
        *,
        version: int | None = None,
        source: PredictionSource = "http",
        routing_key: str | None = None,
    ) -> ScoreResult:
        """The hot path: read the serving pair once, parse against its features, predict,
        record. ``version`` pins the request to the version being served. Raises
        ``InvalidInput`` or ``ModelUnavailable`` with a reason."""
        started = time.perf_counter()
        try:
            current, slots = self._serving(name)
            if version is not None and version != current.version:
                raise ModelUnavailable(
                    "version_not_served", f"model {name!r} serves version {current.version}"
                )
            X, request_id = parse(current, self.max_instances)
            challenger = self.challengers.get(name)
            key = routing_key or request_id or (random_ids(1)[0] if challenger else None)
            scored = route(challenger, key, slots, current, X)
        except (InvalidInput, ModelUnavailable) as exc:
            self.metrics.rejected.labels(exc.reason, source).inc()
            raise
        ids = random_ids(len(scored.outputs))
        latency_ms = (time.perf_counter() - started) * 1000.0
        batch = self._batch(
            name, scored, X, ids, request_id, source, latency_ms, missing=not current.numeric
        )
        self._count(batch, scored)
        self.prediction_log.submit(batch)
        if challenger is not None and challenger.mode == "shadow":
            shadow = self._shadow(name, challenger, batch, random_ids(len(ids)))
            if isinstance(shadow, PredictionBatch):
                self.prediction_log.submit(shadow)
            elif shadow is not None:
                self.prediction_log.submit_event(shadow)
        return ScoreResult(name, scored, ids, request_id)

    def _shadow(
        self,
        name: str,
        challenger: Challenger | None,
        served: PredictionBatch,
        ids: list[str],
        cause: Event | None = None,
    ) -> PredictionBatch | ScoringFailed | None:
        """The shadow's answers to the rows the champion just answered (never returned), or
        the ScoringFailed that reports a shadow that raised (so the deployer can judge it)."""
        started = time.perf_counter()
        try:
            outputs = shadow_scores(challenger, served.feature_names, served.X)
        except Exception as exc:
            assert challenger is not None  # shadow_scores raises only for a shadow
            return self._shadow_failed(name, challenger, served, exc, cause)
        if outputs is None or challenger is None:
            return None
        batch = dataclasses.replace(
            served,
            version=challenger.served.version,
            outputs=outputs,
            prediction_ids=ids,
            served_by="shadow",
            latency_ms=(time.perf_counter() - started) * 1000.0,
            cause=cause,
            shadow_of=served.prediction_ids,
        )
        self.metrics.count_predictions(name, batch.version, "shadow", batch.source, batch.size)
        return batch

    def _shadow_failed(
        self,
        name: str,
        challenger: Challenger,
        served: PredictionBatch,
        exc: Exception,
        cause: Event | None,
    ) -> ScoringFailed:
        version = challenger.served.version
        self.metrics.shadow_failures.labels(name, str(version)).inc()
        data: dict[str, Any] = {
            "model_name": name,
            "request_id": served.request_id or served.prediction_ids[0],
            "error": f"shadow v{version} raised {type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS],
            "version": version,
            "served_by": "shadow",
        }
        if cause is not None:
            event_id = derived_id(cause, ScoringFailed.event_type, "shadow")
            return cause.caused(ScoringFailed, producer=self.producer, event_id=event_id, **data)
        return ScoringFailed(producer=self.producer, **data)

    async def score_events(self, events: list[ScoringRequested]) -> None:
        """Stream scoring of a micro-batch (what arrived together): every request is scored,
        then everything that results is published at once (the predictions as one record
        batch, one round trip for the lot). A publish failure raises, so the batch is retried
        and at worst dead-lettered; event ids are derived from the requests, so a retried batch
        yields the same events (deduped)."""
        await self._first_sync()
        out = Outbox()
        for event in events:
            self._score_event(event, out)
        await out.flush(self.publisher)

    async def _first_sync(self) -> None:
        """A request that races the start-up sync waits for it (up to ``first_sync_wait_s``)."""
        if not self.synced.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.synced.wait(), self.first_sync_wait_s)

    def _score_event(self, event: ScoringRequested, out: Outbox) -> None:
        started = time.perf_counter()
        name = event.model_name
        if self.seen.conflicts(event):
            message = f"event {event.event_id} was seen before with other content: not scored"
            out.events.append(self._failed(event, "event_id_conflict", message, "conflict"))
            return
        try:
            current, slots = self._serving(name)
            X = features_to_matrix(dict(event.features), current)
            challenger = self.challengers.get(name)
            scored = route(challenger, event.request_id, slots, current, X)
        except (InvalidInput, ModelUnavailable) as exc:
            out.events.append(self._failed(event, exc.reason, exc.message))
            return
        pid = derived_id(event, "prediction_id").hex
        latency_ms = (time.perf_counter() - started) * 1000.0
        batch = self._batch(
            name,
            scored,
            X,
            [pid],
            event.request_id,
            "stream",
            latency_ms,
            event,
            missing=not current.numeric,
        )
        out.records.extend(batch.records(self.producer))
        self._count(batch, scored)
        shadow_id = derived_id(event, "shadow_prediction_id").hex
        shadow = self._shadow(name, challenger, batch, [shadow_id], event)
        if isinstance(shadow, PredictionBatch):
            out.records.extend(shadow.records(self.producer))
        elif shadow is not None:
            out.events.append(shadow)

    def _failed(
        self, event: ScoringRequested, reason: str, message: str, scope: str = ""
    ) -> ScoringFailed:
        """A stream request refused: counted, logged, answered by a ScoringFailed whose id
        follows from the request (``scope`` keeps a conflict's apart from the first's)."""
        self.metrics.rejected.labels(reason, "stream").inc()
        message = message[:MAX_ERROR_CHARS]
        log.info("scoring.failed", model=event.model_name, request_id=event.request_id,
                 reason=reason, error=message)  # fmt: skip
        return event.caused(
            ScoringFailed,
            producer=self.producer,
            event_id=derived_id(event, ScoringFailed.event_type, scope),
            model_name=event.model_name,
            request_id=event.request_id,
            error=f"{reason}: {message}",
        )

    def _serving(self, name: str) -> tuple[Served, Slots]:
        """The serving pair; before the first sync an unknown model is "not yet", not 404."""
        try:
            return serving_slots(self.holder, name)
        except ModelUnavailable as exc:
            if exc.reason == "unknown_model" and not self.synced.is_set():
                raise ModelUnavailable(
                    "not_synced", "the scorer has not synced with the registry yet"
                ) from exc
            raise

    def _batch(
        self,
        name: str,
        scored: Scored,
        X: np.ndarray,
        ids: list[str],
        request_id: str | None,
        source: PredictionSource,
        latency_ms: float,
        cause: Event | None = None,
        *,
        missing: bool,
    ) -> PredictionBatch:
        """``missing``: the request was parsed by the general path (its matrix may hold NaN
        for a missing number)."""
        return PredictionBatch(
            model_name=name,
            version=scored.served.version,
            feature_names=scored.features,
            X=X,
            outputs=scored.outputs,
            missing=missing,
            prediction_ids=ids,
            request_id=request_id,
            served_by=scored.served_by,
            source=source,
            latency_ms=latency_ms,
            cause=cause,
        )

    def _count(self, batch: PredictionBatch, scored: Scored) -> None:
        self.metrics.count_predictions(
            batch.model_name, batch.version, batch.served_by, batch.source, batch.size
        )
        if scored.served_by == "fallback":
            self.metrics.fallbacks.labels(batch.model_name).inc()
