"""Every prediction becomes a PredictionMade event, published off the hot path.

HTTP handlers hand a whole scored batch to ``PredictionLog.submit`` (no await, no pydantic),
which encodes it straight into CloudEvents Kafka records with the contracts' batch encoder (no
pydantic model per event; the records decode to the events pydantic would build); a background
task publishes the queued records packed into Kafka record batches, one round trip for
everything that queued up meanwhile. The queue is bounded in predictions: when full, the batch
is dropped and counted rather than making a request wait on Kafka. ``stop`` flushes what is
queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import structlog

from modelbus_contracts import Event, PredictionMade, PredictionSource, ServedBy
from modelbus_contracts.records import BatchEncoder, DictRows, random_hex
from modelbus_ml.outputs import Outputs
from modelbus_platform.bus import Publisher, RawRecord

from .telemetry import ScorerMetrics

log = structlog.get_logger(__name__)

PUBLISH_CHUNK = 2048  # records per publish_records call (one round trip each)
TOPIC = PredictionMade.topic


def random_ids(n: int) -> list[str]:
    """``n`` random 128-bit ids as 32 hex digits (the format of ``uuid4().hex``)."""
    return [random_hex() for _ in range(n)]


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~2x to build on the hot path
class PredictionBatch:
    """One scored request: the rows, the model's outputs and everything the events need.
    ``missing``: ``X`` may hold NaN for a missing number (a model with nullable features, or
    categories): the events carry null for it."""

    model_name: str
    version: int
    feature_names: tuple[str, ...]
    X: np.ndarray
    outputs: Outputs
    prediction_ids: list[str]
    request_id: str | None
    served_by: ServedBy
    source: PredictionSource
    latency_ms: float
    cause: Event | None = None
    shadow_of: list[str] | None = None  # served_by=shadow: the champion predictions mirrored
    occurred_at: datetime | None = None  # None: when encoded
    missing: bool = False

    @property
    def size(self) -> int:
        return len(self.prediction_ids)

    def records(self, producer: str) -> list[RawRecord]:
        """The batch as PredictionMade Kafka records. A caused batch derives each event id
        from its cause, so a redelivered request makes the same events; an uncaused one starts
        a chain per prediction."""
        X = _present(self.X) if self.missing else self.X
        rows = {
            "prediction_id": self.prediction_ids,
            "features": DictRows(self.feature_names, X),
            **output_rows(self.outputs),
        }
        if self.shadow_of is not None:
            rows["shadow_of"] = self.shadow_of
        shared = {
            "model_name": self.model_name,
            "version": self.version,
            "request_id": self.request_id,
            "served_by": self.served_by,
            "source": self.source,
            "latency_ms": self.latency_ms,
        }
        cause = self.cause
        if cause is None:
            return _encoder(producer).encode(shared, rows, occurred_at=self.occurred_at)
        return _encoder(producer).encode(
            shared,
            rows,
            event_ids=[
                uuid.uuid5(cause.event_id, f"{PredictionMade.event_type}/{pid}")
                for pid in self.prediction_ids
            ],
            correlation_id=cause.correlation_id,
            causation_id=cause.event_id,
            occurred_at=self.occurred_at,
        )


def output_rows(outputs: Outputs) -> dict[str, Any]:
    """The per-row PredictionMade fields of each task (``Outputs.record``, by column): binary
    score and label; multiclass also the probabilities; regression the value."""
    if outputs.task == "binary":
        return {"score": outputs.scores, "label": outputs.labels}
    if outputs.task == "regression":
        return {"value": outputs.values}
    return {
        "score": outputs.scores,
        "label": outputs.labels,
        "probabilities": DictRows(outputs.classes, outputs.proba),
    }


def _present(X: np.ndarray) -> list[list[Any]]:
    """Rows with a missing number (NaN) as None, the way events carry it."""
    return [[None if v != v else v for v in row] for row in X.tolist()]


def _encoder(producer: str) -> BatchEncoder:
    return BatchEncoder.of(PredictionMade, producer)


class PredictionLog:
    """A bounded in-process buffer between the request path and Kafka.

    ``submit`` encodes the batch's records at once (a few microseconds per prediction, spread
    evenly over the requests instead of in bursts that would hold requests up behind them) and
    appends them to a list: no await, no lock, no metric update (the drainer sets the pending
    gauge). The background task swaps the buffer out and publishes all of it at once: one
    Kafka round trip for everything that queued up during the previous one."""

    def __init__(
        self,
        publisher: Publisher,
        metrics: ScorerMetrics,
        *,
        producer: str,
        capacity: int,
        linger_s: float = 0.0,
    ) -> None:
        self.publisher = publisher
        self.metrics = metrics
        self.producer = producer
        self.capacity = capacity
        self.linger_s = linger_s
        self.pending = 0
        self._dropping = False
        self._records: list[RawRecord] = []
        self._events: list[Event] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def submit(self, batch: PredictionBatch) -> bool:
        """Queue a batch for publishing; False (and counted) if the log is full."""
        size = len(batch.prediction_ids)
        if self.pending + size > self.capacity:
            self.metrics.log_dropped.inc(size)
            if not self._dropping:  # log the start of an overload, not every dropped batch
                log.warning("prediction_log.dropping", rows=size, pending=self.pending)
            self._dropping = True
            return False
        self._dropping = False
        try:
            records = batch.records(self.producer)
        except Exception:  # never let telemetry fail a request that was answered
            log.exception("prediction_log.build_failed", model=batch.model_name)
            self.metrics.log_errors.inc(size)
            return False
        self.pending += size
        self._records.extend(records)
        if not self._wake.is_set():
            self._wake.set()
        return True

    def submit_event(self, event: Event) -> bool:
        """Queue another telemetry event (a shadow's ScoringFailed) behind the predictions,
        bounded by the same capacity."""
        if self.pending + 1 > self.capacity:
            self.metrics.log_dropped.inc()
            return False
        self.pending += 1
        self._events.append(event)
        self._wake.set()
        return True

    async def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="prediction-log")

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Publish what is queued (up to ``timeout_s``), then stop."""
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
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
            await self._wake.wait()
            if self.linger_s > 0 and not self._stopping and len(self._records) < PUBLISH_CHUNK:
                # like Kafka's linger.ms: wait a moment for more, so the fixed cost of a produce
                # request (batch, request, ack, futures) is shared by many predictions
                await asyncio.sleep(self.linger_s)
            self._wake.clear()
            # everything that queued up meanwhile: many one-row requests, one publish
            records, self._records = self._records, []
            events, self._events = self._events, []
            self.metrics.log_pending.set(self.pending)
            try:
                for start in range(0, len(records), PUBLISH_CHUNK):
                    await self.publish_records(records[start : start + PUBLISH_CHUNK])
                if events:
                    await self.publish_events(events)
            finally:
                self.pending -= len(records) + len(events)
                self.metrics.log_pending.set(self.pending)
            if self._stopping and not self._records and not self._events:
                return

    async def publish_records(self, records: list[RawRecord]) -> None:
        try:
            await self.publisher.publish_records(TOPIC, records)
        except Exception as exc:
            self.metrics.log_errors.inc(len(records))
            log.warning("prediction_log.publish_failed", count=len(records), error=str(exc))

    async def publish_events(self, events: list[Event]) -> None:
        failed = [r for r in await self.publisher.publish_many(events) if r is not None]
        if failed:
            self.metrics.log_errors.inc(len(failed))
            log.warning("prediction_log.publish_failed", count=len(failed), error=str(failed[0]))
