"""Every prediction becomes a PredictionMade event, published off the hot path.

HTTP handlers hand a whole scored batch to ``PredictionLog.submit`` (no await, no pydantic),
which encodes it straight into CloudEvents Kafka records (orjson, no pydantic model per event:
the values were validated when the request was parsed and scored); a background task publishes
the queued records packed into Kafka record batches, one round trip for everything that queued
up meanwhile. The queue is bounded in predictions: when full, the batch is dropped and counted
rather than making a request wait on Kafka. ``stop`` flushes what is queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import orjson
import structlog

from modelbus_contracts import BinaryHeaders, Event, PredictionMade
from modelbus_platform.bus import Publisher, RawRecord, publish_all, publish_records

from .telemetry import ScorerMetrics

log = structlog.get_logger(__name__)

PUBLISH_CHUNK = 2048  # records per publish_records call (one round trip each)
TOPIC = PredictionMade.topic


class _Ids:
    """Random 128-bit ids from a per-process pool refilled from ``os.urandom`` 4,096 at a time:
    ids are unique (122 random bits in a UUID), handed out at a fraction of ``uuid4``'s cost."""

    POOL = 4096

    def __init__(self) -> None:
        self._hex = ""
        self._next = self._end = 0

    def hex(self) -> str:
        """32 hex digits (the format of ``uuid4().hex``)."""
        if self._next == self._end:
            self._hex = os.urandom(16 * self.POOL).hex()
            self._next, self._end = 0, 32 * self.POOL
        i = self._next
        self._next = i + 32
        return self._hex[i : i + 32]

    def uuid(self) -> str:
        """A version 4 UUID string."""
        h = self.hex()
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}
_ids = _Ids()
random_uuid = _ids.uuid


def random_ids(n: int) -> list[str]:
    """``n`` random 128-bit ids as 32 hex digits (the format of ``uuid4().hex``)."""
    return [_ids.hex() for _ in range(n)]


class _Clock:
    """RFC 3339 UTC timestamps with microseconds; the date part is formatted once a second and
    the whole string once a millisecond (requests in the same millisecond share it)."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""
        self._milli = -1
        self._text = ""

    def format(self, epoch_s: float) -> str:
        milli = int(epoch_s * 1000)
        if milli == self._milli:
            return self._text
        second = milli // 1000
        if second != self._second:
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        self._milli = milli
        self._text = f"{self._prefix}.{milli % 1000:03d}Z"
        return self._text


rfc3339 = _Clock().format


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~2x to build on the hot path
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
    occurred_at: float = field(default_factory=time.time)  # epoch seconds

    @property
    def size(self) -> int:
        return len(self.prediction_ids)

    def records(self, producer: str) -> list[RawRecord]:
        """The batch as PredictionMade Kafka records (CloudEvents binary mode), built without a
        pydantic model per prediction; they decode to the events pydantic would build (tested).
        A caused batch derives each event id from its cause, so a redelivered request makes
        the same events."""
        key = self.model_name.encode()
        template = _headers(self.model_name, producer)
        when = rfc3339(self.occurred_at)
        cause = self.cause
        correlation = str(cause.correlation_id) if cause is not None else None
        causation = str(cause.event_id) if cause is not None else None
        mirrored = self.shadow_of or [None] * self.size
        names = self.feature_names
        out: list[RawRecord] = []
        for pid, row, score, label, shadow_of in zip(
            self.prediction_ids,
            self.X.tolist(),
            self.scores.tolist(),
            self.labels.tolist(),
            mirrored,
            strict=True,
        ):
            value = orjson.dumps(
                {
                    "model_name": self.model_name,
                    "prediction_id": pid,
                    "request_id": self.request_id,
                    "version": self.version,
                    "features": dict(zip(names, row, strict=True)),
                    "score": score,
                    "label": label,
                    "served_by": self.served_by,
                    "shadow_of": shadow_of,
                    "source": self.source,
                    "latency_ms": self.latency_ms,
                }
            )
            if cause is not None:
                event_id = str(uuid.uuid5(cause.event_id, f"{PredictionMade.event_type}/{pid}"))
            else:
                event_id = random_uuid()
            headers = template.build(
                event_id=event_id,
                time=when,
                # an uncaused prediction starts its own chain: its correlation id is its id
                correlation_id=correlation or event_id,
                causation_id=causation,
            )
            out.append((key, value, headers))
        return out


@functools.cache
def _headers(model_name: str, producer: str) -> BinaryHeaders:
    return BinaryHeaders(PredictionMade.event_type, subject=model_name, source=producer)


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
            await publish_records(self.publisher, TOPIC, records)
        except Exception as exc:
            self.metrics.log_errors.inc(len(records))
            log.warning("prediction_log.publish_failed", count=len(records), error=str(exc))

    async def publish_events(self, events: list[Event]) -> None:
        failed = [r for r in await publish_all(self.publisher, events) if r is not None]
        if failed:
            self.metrics.log_errors.inc(len(failed))
            log.warning("prediction_log.publish_failed", count=len(failed), error=str(failed[0]))
