"""Batch scoring, the service layer: accept jobs, run them in the background, record progress.

A job is accepted once (``job_id`` is unique in the job store: a re-delivered request or a
repeated POST with the same id is a no-op), then runs as a background task, one job at a time
per model: resolve the version (champion, or the named one) from the registry, load it the
verified way (``modelbus_platform.serving.load_version``: sha256 must match the record; the
version the previous job of the model loaded is reused), read the input, score it chunk by chunk
in a worker thread (the event loop keeps serving), write the output next to the input, record
the outcome and emit BatchScoringCompleted.

Where a job reads and writes is bounded (``domain.StoreBounds``): checked when it is accepted
(a ``BadJob`` with the reason: 422 at the API, a failed job for an event) and again before it
runs, so no job ever writes outside its output prefixes.

States: queued -> running -> succeeded | failed. A job interrupted by a shutdown stays
``running`` in its record and is re-run when this instance starts again (the output is written
in one put at the end and the completion event has a deterministic id, so a re-run is safe).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from prometheus_client import Counter, Histogram
from pymongo.errors import PyMongoError

from modelbus_contracts import BatchScoringCompleted, BatchScoringRequested, Event
from modelbus_contracts.api import VersionView
from modelbus_ml.serving import Served
from modelbus_platform.artifacts import AllowPickle, ArtifactTrust, refuse_pickle
from modelbus_platform.metrics import Metrics
from modelbus_platform.outbox import Notifier
from modelbus_platform.registry import Registry
from modelbus_platform.serving import load_version
from modelbus_platform.stores import ObjectNotFound, ObjectStore

from .domain import (
    CONTENT_TYPES,
    DEFAULT_PREFIXES,
    MAX_CHUNK_TIMINGS,
    BadJob,
    BatchJob,
    ChunkTiming,
    StoreBounds,
    Trigger,
    check_model_name,
    errors_uri_for,
    event_job_id,
    file_format,
    job_keys,
    new_job_id,
)
from .ports import JobStore, JobStoreUnavailable
from .scoring import BatchOutput, ChunkedScorer

log = structlog.get_logger(__name__)

INIT_RETRY_MAX_S = 30.0


class BatchMetrics(Metrics):
    """The platform's series plus the batch service's own."""

    def __init__(self, service: str = "batch") -> None:
        super().__init__(service)
        r = self.registry
        self.jobs = Counter(
            "modelbus_batch_jobs_total",
            "Batch jobs finished, by outcome",
            ["outcome"],
            registry=r,
        )
        self.rows = Counter(
            "modelbus_batch_rows_total",
            "Batch rows scored, by outcome (ok, failed)",
            ["outcome"],
            registry=r,
        )
        self.seconds = Histogram(
            "modelbus_batch_job_seconds",
            "Wall time of one batch job",
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
            registry=r,
        )


class BatchService:
    def __init__(
        self,
        *,
        jobs: JobStore,
        store: ObjectStore,
        registry: Registry,
        events: Notifier,
        metrics: BatchMetrics,
        producer: str,
        instance: str,
        bucket: str | None = None,
        input_prefixes: Sequence[str] = DEFAULT_PREFIXES,
        output_prefixes: Sequence[str] = DEFAULT_PREFIXES,
        chunk_rows: int = 50_000,
        id_column: str | None = "id",
        clock: Callable[[], float] = time.time,
        trust: ArtifactTrust | None = None,
        allow_pickle: AllowPickle = refuse_pickle,
    ) -> None:
        self.trust = trust or ArtifactTrust()
        self.allow_pickle = allow_pickle
        self.jobs = jobs
        self.store = store
        self.registry = registry
        self.events = events
        self.metrics = metrics
        self.producer = producer
        self.instance = instance
        self.bounds = StoreBounds(bucket, input_prefixes, output_prefixes)
        self.chunk_rows = chunk_rows
        self.id_column = id_column
        self.clock = clock
        self.ready = asyncio.Event()  # the job store answered and interrupted jobs are resumed
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._active: set[str] = set()  # job ids with a task in this process
        self._loaded: dict[str, Served] = {}  # per model, the version its last job loaded

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the job store's indexes (retried until MongoDB answers; the app starts
        meanwhile and reports ``jobs`` not ready), then re-run the jobs this instance accepted
        but did not finish."""
        delay = 0.5
        while True:
            try:
                await self.jobs.init()
                interrupted = await self.jobs.unfinished(self.instance)
                break
            except PyMongoError as exc:
                log.warning("batch.store_unavailable", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, INIT_RETRY_MAX_S)
        for job in interrupted:
            if job.job_id not in self._active:
                log.info("batch.resumed", job_id=job.job_id, model=job.model_name, state=job.state)
                self._spawn(job)
        self.ready.set()

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def idle(self) -> None:
        """Wait until every running job has finished (tests, benchmark)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- accepting jobs ----------------------------------------------------------------------

    async def submit(
        self,
        *,
        model_name: str,
        input_uri: str,
        output_uri: str | None = None,
        version: int | None = None,
        trigger: Trigger = "api",
        job_id: str | None = None,
        cause: BatchScoringRequested | None = None,
    ) -> tuple[BatchJob, bool]:
        """Record and start a job; ``(job, False)`` if this ``job_id`` already exists.
        Raises ``BadJob`` for a request that cannot run, ``JobStoreUnavailable``."""
        job = self._new_job(model_name, input_uri, output_uri, version, trigger, job_id, cause)
        created = await self._store(self.jobs.create(job))
        if not created:
            existing = await self._store(self.jobs.get(job.job_id))
            log.info("batch.duplicate", job_id=job.job_id, model=model_name, trigger=trigger)
            return existing or job, False
        log.info(
            "batch.queued",
            job_id=job.job_id,
            model=model_name,
            input_uri=input_uri,
            output_uri=job.output_uri,
            version=version,
            trigger=trigger,
        )
        self._spawn(job)
        return job, True

    async def submit_event(self, event: BatchScoringRequested) -> None:
        """The BatchScoringRequested handler's work: never blocks on the job itself. A request
        that cannot run is recorded as a failed job (visible in ``GET /batch-jobs``)."""
        try:
            await self.submit(
                model_name=event.model_name,
                input_uri=event.input_uri,
                output_uri=event.output_uri,
                version=event.version,
                trigger="event",
                job_id=event.job_id,
                cause=event,
            )
        except BadJob as exc:
            log.warning("batch.rejected", job_id=event.job_id, reason=exc.reason, error=exc.message)
            job = self._record(
                event.model_name,
                event.input_uri,
                event.output_uri or event.input_uri,
                event.version,
                "event",
                event.job_id,
                event,
            )
            job.state, job.error, job.finished_at = (
                "failed",
                f"{exc.reason}: {exc.message}",
                job.created_at,
            )
            await self._store(self.jobs.create(job))

    async def get(self, job_id: str) -> BatchJob | None:
        return await self._store(self.jobs.get(job_id))

    async def list(self, model_name: str | None = None, limit: int = 50) -> list[BatchJob]:
        return await self._store(self.jobs.list(model_name, limit))

    def _new_job(
        self,
        model_name: str,
        input_uri: str,
        output_uri: str | None,
        version: int | None,
        trigger: Trigger,
        job_id: str | None,
        cause: BatchScoringRequested | None,
    ) -> BatchJob:
        check_model_name(model_name)
        if version is not None and version < 1:
            raise BadJob("bad_version", f"version must be >= 1, got {version}")
        _, output, _ = job_keys(input_uri, output_uri, self.bounds)
        return self._record(model_name, input_uri, output, version, trigger, job_id, cause)

    def _record(
        self,
        model_name: str,
        input_uri: str,
        output_uri: str,
        version: int | None,
        trigger: Trigger,
        job_id: str | None,
        cause: BatchScoringRequested | None,
    ) -> BatchJob:
        return BatchJob(
            job_id=job_id or new_job_id(),
            model_name=model_name,
            input_uri=input_uri,
            output_uri=output_uri,
            requested_version=version,
            trigger=trigger,
            instance=self.instance,
            correlation_id=str(cause.correlation_id if cause else uuid.uuid4()),
            causation_id=str(cause.event_id) if cause else None,
            created_at=self.clock(),
        )

    async def _store(self, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except PyMongoError as exc:
            raise JobStoreUnavailable(f"batch job store: {exc}") from exc

    # -- running jobs ------------------------------------------------------------------------

    def _spawn(self, job: BatchJob) -> None:
        if job.job_id in self._active:  # e.g. accepted while start() was looking for leftovers
            return
        self._active.add(job.job_id)
        task = asyncio.create_task(self._run(job), name=f"batch-{job.job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self._active.discard(job.job_id))

    async def _run(self, job: BatchJob) -> None:
        async with self._locks.setdefault(job.model_name, asyncio.Lock()):
            started = self.clock()
            job.state, job.started_at = "running", started
            await self._save(job, "state", "started_at")
            log.info("batch.started", job_id=job.job_id, model=job.model_name)
            t0 = time.perf_counter()
            try:
                output = await self._execute(job)
            except asyncio.CancelledError:
                log.warning("batch.interrupted", job_id=job.job_id, rows_done=job.rows_done)
                raise
            except Exception as exc:
                await self._failed(job, exc, time.perf_counter() - t0)
                return
            await self._succeeded(job, output, time.perf_counter() - t0)

    async def _execute(self, job: BatchJob) -> BatchOutput:
        # checked again here: a job recorded before the bounds changed stays inside them too
        input_key, _, output_key = job_keys(job.input_uri, job.output_uri, self.bounds)
        errors_key = self.bounds.output_key(errors_uri_for(job.output_uri))
        view = await self._resolve(job)
        served = await self._load(job.model_name, view)
        job.version = served.version
        try:
            data = await self.store.get(input_key)
        except ObjectNotFound as exc:
            raise BadJob("input_missing", f"no object at {job.input_uri!r}") from exc
        scorer = await asyncio.to_thread(
            ChunkedScorer,
            data,
            input_format=file_format(job.input_uri),
            output_format=file_format(job.output_uri),
            served=served,
            chunk_rows=self.chunk_rows,
            id_column=self.id_column,
        )
        del data
        job.rows_total = scorer.rows_total
        await self._save(job, "version", "rows_total")
        while True:
            t0 = time.perf_counter()
            chunk = await asyncio.to_thread(scorer.step)
            if chunk is None:
                break
            timing = ChunkTiming(
                index=scorer.index - 1,
                rows=chunk.rows,
                failed=chunk.failed,
                seconds=round(time.perf_counter() - t0, 6),
            )
            await self._progress(job, timing)
        output = await asyncio.to_thread(scorer.finish)
        fmt = file_format(job.output_uri)
        await self.store.put(output_key, output.data, CONTENT_TYPES[fmt])
        if output.errors is not None:
            job.errors_uri = errors_uri_for(job.output_uri)
            await self.store.put(errors_key, output.errors, "text/csv")
        return output

    async def _resolve(self, job: BatchJob) -> VersionView:
        if job.requested_version is None:
            view = await self.registry.champion(job.model_name)
            if view is None:
                raise BadJob("no_champion", f"model {job.model_name!r} has no champion")
            return view
        view = await self.registry.version(job.model_name, job.requested_version)
        if view is None:
            raise BadJob(
                "unknown_version", f"{job.model_name!r} has no version {job.requested_version}"
            )
        return view

    async def _load(self, name: str, view: VersionView) -> Served:
        """Load and verify ``view``; the version the model's previous job loaded (same number,
        same sha256) is reused as it is, already verified."""
        served = self._loaded.get(name)
        if served is None or not served.same_as(view.version, view.artifact.sha256):
            served = await load_version(self.store, view, self.trust, self.allow_pickle)
            self._loaded[name] = served
        return served

    async def _progress(self, job: BatchJob, timing: ChunkTiming) -> None:
        job.rows_done += timing.rows
        job.failed_rows += timing.failed
        job.chunks = [*job.chunks, timing][-MAX_CHUNK_TIMINGS:]
        log.info(
            "batch.chunk",
            job_id=job.job_id,
            chunk=timing.index,
            rows=timing.rows,
            failed=timing.failed,
            seconds=timing.seconds,
            rows_done=job.rows_done,
            rows_total=job.rows_total,
        )
        await self._save(job, "rows_done", "failed_rows", "chunks")

    async def _succeeded(self, job: BatchJob, output: BatchOutput, seconds: float) -> None:
        job.state, job.finished_at, job.seconds = "succeeded", self.clock(), round(seconds, 6)
        job.rows_done, job.failed_rows = output.rows, output.failed_rows
        await self._save(
            job,
            "state",
            "finished_at",
            "seconds",
            "rows_done",
            "failed_rows",
            "errors_uri",
            events=[completed_event(job, self.producer)],
        )
        await self.events.notify()
        self.metrics.jobs.labels("succeeded").inc()
        self.metrics.rows.labels("ok").inc(output.rows - output.failed_rows)
        self.metrics.rows.labels("failed").inc(output.failed_rows)
        self.metrics.seconds.observe(seconds)
        log.info(
            "batch.succeeded",
            job_id=job.job_id,
            model=job.model_name,
            version=job.version,
            rows=output.rows,
            failed_rows=output.failed_rows,
            seconds=job.seconds,
            output_uri=job.output_uri,
        )

    async def _failed(self, job: BatchJob, exc: Exception, seconds: float) -> None:
        reason = exc.reason if isinstance(exc, BadJob) else type(exc).__name__
        message = exc.message if isinstance(exc, BadJob) else str(exc)
        job.state, job.finished_at, job.seconds = "failed", self.clock(), round(seconds, 6)
        job.error = f"{reason}: {message}"[:2000]
        await self._save(job, "state", "finished_at", "seconds", "error", "version")
        self.metrics.jobs.labels("failed").inc()
        log.error("batch.failed", job_id=job.job_id, model=job.model_name, error=job.error)

    async def _save(self, job: BatchJob, *names: str, events: Sequence[Event] = ()) -> None:
        """Best effort: a job store hiccup must not fail a job that is scoring fine (a success
        that could not be recorded leaves the job unfinished: it is re-run at the next start
        and emits the same event then)."""
        fields = job.model_dump(mode="json", include=set(names))
        try:
            await self.jobs.update(job.job_id, fields, events=events)
        except PyMongoError as exc:
            log.warning("batch.record_failed", job_id=job.job_id, fields=names, error=str(exc))


def completed_event(job: BatchJob, producer: str) -> BatchScoringCompleted:
    """Caused by the request (same correlation id) or, for API jobs, a fresh correlation id;
    the event id derives from the job id, so a re-run emits the same event."""
    return BatchScoringCompleted(
        event_id=event_job_id(job.job_id, BatchScoringCompleted.event_type),
        producer=producer,
        correlation_id=uuid.UUID(job.correlation_id),
        causation_id=uuid.UUID(job.causation_id) if job.causation_id else None,
        model_name=job.model_name,
        job_id=job.job_id,
        version=job.version or 0,
        input_uri=job.input_uri,
        output_uri=job.output_uri,
        rows=job.rows_done,
        failed_rows=job.failed_rows,
        seconds=job.seconds or 0.0,
    )
