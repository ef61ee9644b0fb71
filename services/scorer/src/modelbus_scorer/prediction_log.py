"""Every prediction becomes a PredictionMade event, published off the hot path.

HTTP handlers hand a whole scored batch to ``PredictionLog.submit`` (no await, no pydantic); a
background task turns it into events and publishes them. The queue is bounded in predictions:
when full, the batch is dropped and counted rather than making a request wait on Kafka.
``stop`` flushes what is queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass

import numpy as np
import structlog

from modelbus_contracts import Event, PredictionMade
from modelbus_platform.bus import Publisher, publish_all

from .telemetry import ScorerMetrics

log = structlog.get_logger(__name__)

PUBLISH_CONCURRENCY = 256  # events per pipelined publish (small: building events blocks the loop)
DRAIN_BATCHES = 256  # queued request batches merged into one publish


@dataclass(frozen=True, slots=True)
class PredictionBatch:
    """One scored request: the rows, their scores and everything the events need."""

    model_name: str
    version: int
    feature_names: tuple[str, ...]
    X: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    prediction_ids: list[str]
    request_id: str | None
    served_by: str
    source: str
    latency_ms: float
    cause: Event | None = None
    shadow_of: list[str] | None = None  # served_by=shadow: the champion predictions mirrored

    @property
    def size(self) -> int:
        return len(self.prediction_ids)

    def events(self, producer: str) -> list[PredictionMade]:
        rows = self.X.tolist()
        out = []
        mirrored = self.shadow_of or [None] * self.size
        for pid, row, score, label, shadow_of in zip(
            self.prediction_ids,
            rows,
            self.scores.tolist(),
            self.labels.tolist(),
            mirrored,
            strict=True,
        ):
            data = dict(
                model_name=self.model_name,
                prediction_id=pid,
                request_id=self.request_id,
                version=self.version,
                features=dict(zip(self.feature_names, row, strict=True)),
                score=score,
                label=label,
                served_by=self.served_by,
                source=self.source,
                latency_ms=self.latency_ms,
                shadow_of=shadow_of,
            )
            # built from values the scorer has already validated (finite features, scores from
            # the model): skip re-validation on this hot path (~10x cheaper); encoding still
            # refuses a non-finite value
            if self.cause is not None:
                event_id = uuid.uuid5(self.cause.event_id, f"{PredictionMade.event_type}/{pid}")
                out.append(
                    PredictionMade.model_construct(
                        producer=producer,
                        event_id=event_id,
                        correlation_id=self.cause.correlation_id,
                        causation_id=self.cause.event_id,
                        **data,
                    )
                )
            else:
                out.append(PredictionMade.model_construct(producer=producer, **data))
        return out


class PredictionLog:
    def __init__(
        self, publisher: Publisher, metrics: ScorerMetrics, *, producer: str, capacity: int
    ) -> None:
        self.publisher = publisher
        self.metrics = metrics
        self.producer = producer
        self.capacity = capacity
        self.pending = 0
        self._dropping = False
        self._queue: asyncio.Queue[PredictionBatch | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def submit(self, batch: PredictionBatch) -> bool:
        """Queue a batch for publishing; False (and counted) if the log is full."""
        if self.pending + batch.size > self.capacity:
            self.metrics.log_dropped.inc(batch.size)
            if not self._dropping:  # log the start of an overload, not every dropped batch
                log.warning("prediction_log.dropping", rows=batch.size, pending=self.pending)
            self._dropping = True
            return False
        self._dropping = False
        self.pending += batch.size
        self.metrics.log_pending.set(self.pending)
        self._queue.put_nowait(batch)
        return True

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="prediction-log")

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Publish what is queued (up to ``timeout_s``), then stop."""
        if self._task is None:
            return
        self._queue.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        except TimeoutError:
            log.warning("prediction_log.flush_timeout", pending=self.pending)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    async def _run(self) -> None:
        while True:
            batches = [await self._queue.get()]
            # drain what queued up meanwhile: many one-row requests become one pipelined publish
            while not self._queue.empty() and len(batches) < DRAIN_BATCHES:
                batches.append(self._queue.get_nowait())
            stop = any(b is None for b in batches)
            ready = [b for b in batches if b is not None]
            try:
                await self.publish_batches(ready)
            finally:
                self.pending -= sum(b.size for b in ready)
                self.metrics.log_pending.set(self.pending)
            if stop:
                return

    async def publish_batch(self, batch: PredictionBatch) -> None:
        await self.publish_batches([batch])

    async def publish_batches(self, batches: list[PredictionBatch]) -> None:
        events = []
        for batch in batches:
            try:
                events.extend(batch.events(self.producer))
            except Exception:
                log.exception("prediction_log.build_failed", model=batch.model_name)
                self.metrics.log_errors.inc(batch.size)
        for start in range(0, len(events), PUBLISH_CONCURRENCY):
            chunk = events[start : start + PUBLISH_CONCURRENCY]
            results = await publish_all(self.publisher, chunk)
            failed = [r for r in results if r is not None]
            if failed:
                self.metrics.log_errors.inc(len(failed))
                log.warning(
                    "prediction_log.publish_failed", count=len(failed), error=str(failed[0])
                )
