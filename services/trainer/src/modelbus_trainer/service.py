"""The trainer's service layer: record feedback, turn triggers into runs, execute runs as
background tasks (one per model at a time), store snapshots and artifacts, emit ModelTrained."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

import structlog
from prometheus_client import Counter, Histogram
from pydantic import ValidationError

from modelbus_contracts import (
    ArtifactRef,
    DatasetRef,
    DriftDetected,
    Event,
    FeatureStats,
    LabelObserved,
    Lineage,
    ModelTrained,
    PredictionMade,
    Signature,
    TrainingRequested,
)
from modelbus_contracts.envelope import utcnow
from modelbus_ml import Dataset, DatasetError, from_csv_bytes
from modelbus_platform.artifacts import ArtifactTrust
from modelbus_platform.bus import Publisher
from modelbus_platform.metrics import Metrics
from modelbus_platform.outbox import Notifier
from modelbus_platform.policies import Policies
from modelbus_platform.registry import Registry, RegistryError
from modelbus_platform.scheduler import CronScheduler
from modelbus_platform.stores import ObjectNotFound, ObjectStore, sha256_hex
from modelbus_platform.transient import outlast

from .adapters import COUNTED_SERVERS
from .config import ScheduleSpec, TrainerSettings
from .domain import (
    ACTIVE_STATES,
    DataSpec,
    RunFailed,
    RunSkipped,
    RunState,
    TrainingResult,
    artifact_content_type,
    artifact_key,
    check_family,
    check_pickle_allowed,
    claim_lapsed,
    content_address,
    cooldown_remaining,
    csv_dataset,
    data_spec,
    dataset_key,
    dedupe_key,
    drift_back_rows,
    drift_onset,
    drift_skip_reason,
    drift_window_rows,
    feedback_dataset,
    ladder_rows,
    lineage_params,
    new_run,
    object_key,
    rebuild_trigger,
    run_claim,
    run_id_for,
    train_snapshot,
    trained_event_id,
    training_data,
    training_defaults,
    window_record,
)
from .ports import FeedbackStore, LockStore, RunStore
from .reproduce import ReproduceFailed, redo

log = structlog.get_logger(__name__)

PRODUCER = "trainer"
CLAIM_ATTEMPTS = 5


@dataclass(frozen=True)
class TrainingAccepted:
    """What a training request is answered with: the run it makes, or (``duplicate``) the
    identical run made within the dedupe window."""

    event_id: str
    correlation_id: str
    run_id: str
    duplicate: bool = False


class TrainerMetrics(Metrics):
    """The platform's series plus the trainer's own."""

    def __init__(self, service: str = "trainer") -> None:
        super().__init__(service)
        self.runs = Counter(
            "modelbus_trainer_runs_total",
            "Training runs by final state",
            ["state", "trigger"],
            registry=self.registry,
        )
        self.deduplicated = Counter(
            "modelbus_trainer_runs_deduplicated_total",
            "Training triggers that made no run: an identical run is within the dedupe window",
            ["trigger"],
            registry=self.registry,
        )
        self.training_seconds = Histogram(
            "modelbus_trainer_training_seconds",
            "Time to fit one model",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
            registry=self.registry,
        )


class TrainerService:
    def __init__(
        self,
        settings: TrainerSettings,
        *,
        runs: RunStore,
        feedback: FeedbackStore,
        locks: LockStore,
        store: ObjectStore,
        publisher: Publisher,
        events: Notifier,
        metrics: TrainerMetrics | None = None,
        clock: Callable[[], datetime] = utcnow,
        policies: Policies | None = None,
        scheduler: CronScheduler[ScheduleSpec] | None = None,
        registry: Registry | None = None,
        trust: ArtifactTrust | None = None,
    ) -> None:
        self.settings = settings
        self.trust = trust or ArtifactTrust()  # signs what it trains (with a signing key)
        self.policies = policies
        # the champion's signature (a retrain keeps its task, classes and feature kinds)
        self.registry = registry or (policies.registry if policies else None)
        self.scheduler = scheduler
        self.runs = runs
        self.feedback = feedback
        self.locks = locks
        self.store = store
        self.publisher = publisher
        self.events = events
        self.metrics = metrics
        self.clock = clock
        self._tasks: dict[str, asyncio.Task[None]] = {}
        configured = (p.get("entry_point") for p in settings.model_params.values())
        self.allowed_entry_points = set(settings.python_entry_points) | {
            str(e) for e in configured if e
        }

    # -- live schedules ---------------------------------------------------------------------

    async def apply_schedule(self, name: str) -> bool:
        """The model's retraining schedule: its live policy's (registry), else
        ``MODELBUS_SCHEDULES``'; set on the running scheduler. True when it changed."""
        if self.scheduler is None or self.policies is None:
            return False
        view = await self.policies.view(name)
        live = view.policy.training.schedule
        spec = self.settings.schedules.get(name)
        if live is not None:
            try:
                spec = ScheduleSpec.model_validate(live.model_dump())
            except ValidationError as exc:  # the registry checks it; an older one may not
                log.warning("schedule.refused", model=name, revision=view.revision, error=str(exc))
        return self.scheduler.set(name, spec, self.clock())

    async def load_schedules(self, retry_s: float = 5.0) -> None:
        """Start-up: every model's live schedule (a background task: it waits for the
        registry, retrying every ``retry_s``, while the settings' schedules already run)."""
        if self.scheduler is None or self.policies is None:
            return
        while True:
            try:
                views = await self.policies.load_all()
                break
            except RegistryError as exc:
                log.warning("schedule.policies_unavailable", error=str(exc), retry_in_s=retry_s)
                await asyncio.sleep(retry_s)
        for view in views:
            await self.apply_schedule(view.model_name)
        log.info("schedule.policies_loaded", models=len(views))

    async def _new_run(self, event: Event) -> dict[str, Any]:
        """The run for a trigger, with the model's training policy as it is now (the live
        policy's family and params over the settings' ``model_params``) and its dedupe key."""
        name = event.model_name
        live = await self.policies.view(name) if self.policies else None
        run = new_run(
            event,
            default_seed=self.settings.default_seed,
            now=self.clock(),
            model_defaults=training_defaults(
                self.settings.model_params.get(name), live.policy.training if live else None
            ),
            holdout_fraction=self.settings.holdout_fraction,
        )
        run["policy_revision"] = live.revision if live else 0
        run["allow_pickle"] = bool(live and live.policy.artifacts.allow_pickle)
        run["dedupe_key"] = dedupe_key(run, training_data(event, await self._dataset_sha(event)))
        return run

    async def _dataset_sha(self, event: Event) -> str | None:
        """The sha256 of a request's dataset: named by a content-addressed snapshot's key, else
        of the bytes stored under its key now (None without a dataset, or when it is missing:
        the run will fail, and a failed run blocks nothing)."""
        uri = getattr(event, "dataset_uri", None)
        if not uri or self.settings.train_dedupe_window_s <= 0:
            return None
        key = object_key(uri, self.settings.bucket)
        named = content_address(key)
        if named is not None:
            return named
        try:
            data = await self.store.get(key)
        except ObjectNotFound:
            return None
        return await asyncio.to_thread(sha256_hex, data)

    # -- deduplication ------------------------------------------------------------------------

    async def _claim(self, run: dict[str, Any]) -> dict[str, Any] | None:
        """Claim ``run``'s dedupe key: None when the run may go ahead (the key is its own
        now), else the standing claim of the identical run (pending, running or succeeded,
        made within ``train_dedupe_window_s``). Race-safe: the store's insert and
        compare-and-set decide between concurrent claimants, trainer replicas included."""
        window = self.settings.train_dedupe_window_s
        if window <= 0:
            return None
        key, mine = run["dedupe_key"], run_claim(run)
        holder = None
        for _ in range(CLAIM_ATTEMPTS):
            if await self.runs.insert_claim(key, mine):
                return None
            holder = await self.runs.get_claim(key)
            if holder is None:  # released between the two calls
                continue
            if holder["run_id"] == run["run_id"]:
                return None  # this run's own claim (a re-delivery, or the API claimed it)
            claimant = await self.runs.get(holder["run_id"])
            state = claimant["state"] if claimant else None
            if not claim_lapsed(holder, state, run["created_at"], window):
                return holder
            if await self.runs.replace_claim(key, holder["run_id"], mine):
                return None
        if holder is None:
            raise RuntimeError(f"could not claim dedupe key {key}")
        return holder

    def _deduplicated(self, run: dict[str, Any], holder: dict[str, Any]) -> None:
        log.info(
            "run.deduplicated",
            model_name=run["model_name"],
            trigger=run["trigger"],
            trigger_event_id=run["trigger_event_id"],
            existing_run_id=holder["run_id"],
            existing_trigger=holder.get("trigger"),
            dedupe_key=run["dedupe_key"],
        )
        if self.metrics:
            self.metrics.deduplicated.labels(run["trigger"]).inc()

    # -- feedback -----------------------------------------------------------------------------

    async def record_prediction(self, event: PredictionMade) -> bool:
        if event.served_by not in COUNTED_SERVERS:
            return False
        await self.feedback.record_prediction(event)
        return True

    async def record_label(self, event: LabelObserved) -> None:
        await self.feedback.record_label(event)

    async def record_predictions(self, events: list[PredictionMade]) -> int:
        counted = [e for e in events if e.served_by in COUNTED_SERVERS]
        await self.feedback.record_predictions(counted)
        return len(counted)

    async def record_labels(self, events: list[LabelObserved]) -> None:
        await self.feedback.record_labels(events)

    async def feedback_count(self, model_name: str) -> dict[str, Any]:
        return {
            "model_name": model_name,
            "complete": await self.feedback.count_complete(model_name),
            "total": await self.feedback.count_all(model_name),
        }

    # -- triggers -----------------------------------------------------------------------------

    async def on_training_requested(self, event: TrainingRequested) -> dict[str, Any] | None:
        """Record and schedule the run of a request; None for a re-delivered one, or for one
        identical to a run within the dedupe window (logged and counted, nothing recorded)."""
        if await self.runs.get(run_id_for(event.event_id)) is not None:
            log.info("run.duplicate_trigger", run_id=run_id_for(event.event_id))
            return None
        run = await self._new_run(event)
        holder = await self._claim(run)
        if holder is not None:
            self._deduplicated(run, holder)
            return None
        if not await self.runs.create(run):
            log.info("run.duplicate_trigger", run_id=run["run_id"])
            return None
        log.info("run.recorded", run_id=run["run_id"], trigger=run["trigger"])
        self.schedule(run["run_id"])
        return run

    async def on_drift(self, event: DriftDetected) -> dict[str, Any] | None:
        if await self.runs.get(run_id_for(event.event_id)) is not None:
            log.info("run.duplicate_trigger", run_id=run_id_for(event.event_id))
            return None
        run = await self._new_run(event)
        holder = await self._claim(run)
        if holder is not None:
            self._deduplicated(run, holder)
            return None
        reason = await self._drift_skip_reason(event, run["created_at"])
        if reason is not None:
            run.update(state=RunState.SKIPPED.value, reason=reason, finished_at=run["created_at"])
        if not await self.runs.create(run):
            return None
        if reason is not None:
            self._count(run, RunState.SKIPPED)
            log.info("run.skipped", run_id=run["run_id"], reason=reason, feature=event.feature)
            return run
        log.info("run.recorded", run_id=run["run_id"], trigger="drift", feature=event.feature)
        self.schedule(run["run_id"])
        return run

    async def _drift_skip_reason(self, event: DriftDetected, now: datetime) -> str | None:
        """In flight, or (for a new incident only: an incident's later attempts are paced by
        the monitor) within the drift cooldown."""
        in_flight = await self._in_flight_run(event.model_name, now)
        left = 0.0
        if event.attempt == 1:
            last = await self.runs.last_drift_run_created(event.model_name)
            left = cooldown_remaining(last, now, self.settings.drift_cooldown_s)
        return drift_skip_reason(in_flight, left)

    async def _in_flight_run(self, model_name: str, now: datetime) -> str | None:
        active = await self.runs.active(model_name)
        if active:
            return active[0]["run_id"]
        lock = await self.locks.holder(model_name)
        if lock is None:
            return None
        age = (now - lock["acquired_at"]).total_seconds()
        return lock["run_id"] if age < self.settings.lock_ttl_s else None

    async def request_training(
        self,
        model_name: str,
        *,
        dataset_uri: str | None,
        params: dict[str, Any],
        seed: int | None,
    ) -> TrainingAccepted:
        """Publish a TrainingRequested, its dedupe key claimed first for the run it will make:
        an identical request within the window is answered with that run (``duplicate``) and
        publishes nothing."""
        event = TrainingRequested(
            producer=PRODUCER,
            model_name=model_name,
            reason="api",
            dataset_uri=dataset_uri,
            params=params,
            seed=seed,
        )
        run = await self._new_run(event)
        holder = await self._claim(run)
        if holder is not None:
            self._deduplicated(run, holder)
            return TrainingAccepted(
                event_id=holder["trigger_event_id"],
                correlation_id=holder["correlation_id"],
                run_id=holder["run_id"],
                duplicate=True,
            )
        try:
            await self.publisher.publish(event)
        except BaseException:
            await self.runs.release_claim(run["dedupe_key"], run["run_id"])  # no run will come
            raise
        log.info("training.requested", model_name=model_name, event_id=str(event.event_id))
        return TrainingAccepted(
            event_id=str(event.event_id),
            correlation_id=str(event.correlation_id),
            run_id=run["run_id"],
        )

    async def put_dataset(
        self, model_name: str, data: bytes, task: str | None = None
    ) -> dict[str, Any]:
        """Validate a CSV (as ``task``, else as its labels say) and store its canonical form
        content-addressed (DatasetError if bad)."""
        if not any(line.strip() for line in data.splitlines()[1:]):
            raise DatasetError("dataset has no rows")
        ds = await asyncio.to_thread(partial(from_csv_bytes, data, task=task))
        ref = await self._put_snapshot(model_name, ds.to_csv_bytes(), ds.rows)
        log.info("dataset.stored", model_name=model_name, uri=ref.uri, rows=ds.rows)
        return {
            **ref.model_dump(),
            "feature_names": list(ds.feature_names),
            "signature": ds.signature(),
        }

    # -- background runs ----------------------------------------------------------------------

    def schedule(self, run_id: str) -> None:
        if run_id in self._tasks:
            return
        task = asyncio.create_task(self.execute(run_id), name=f"run-{run_id}")
        self._tasks[run_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(run_id, None))

    async def resume(self) -> int:
        """Reschedule runs a previous process left unfinished (state is rebuilt from the store)."""
        active = await self.runs.active()
        for run in active:
            log.info("run.resumed", run_id=run["run_id"], state=run["state"])
            self.schedule(run["run_id"])
        return len(active)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait for the runs scheduled so far (tests, graceful shutdown)."""
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout)

    async def stop(self) -> None:
        """Cancel in-flight runs; they stay in their active state and resume on next start."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def execute(self, run_id: str) -> None:
        run = await self.runs.get(run_id)
        if run is None or run["state"] not in ACTIVE_STATES:
            return
        bound = log.bind(
            run_id=run_id, model_name=run["model_name"], correlation_id=run["correlation_id"]
        )
        started = time.perf_counter()
        locked = False
        try:
            locked = await self._acquire_lock(run)
            await self._run(run, bound, started)
        except asyncio.CancelledError:
            bound.info("run.interrupted", state=run["state"])
            raise
        except RunSkipped as exc:
            await self._finish(run, RunState.SKIPPED, str(exc), started)
            bound.info("run.skipped", reason=str(exc))
        except RunFailed as exc:
            await self._finish(run, RunState.FAILED, str(exc), started)
            bound.warning("run.failed", reason=str(exc))
        except Exception as exc:
            await self._finish(run, RunState.FAILED, f"{type(exc).__name__}: {exc}", started)
            bound.exception("run.crashed")
        finally:
            if locked:
                await self.locks.release(run["model_name"], run_id)

    async def _acquire_lock(self, run: dict[str, Any]) -> bool:
        """Wait for the model's lock (a drift run does not wait: it was told to skip if busy)."""
        model, run_id = run["model_name"], run["run_id"]
        deadline = time.monotonic() + self.settings.lock_ttl_s
        while True:
            now = self.clock()
            if await self.locks.acquire(model, run_id, now, self.settings.lock_ttl_s):
                return True
            if run["trigger"] == "drift" or time.monotonic() > deadline:
                holder = await self.locks.holder(model)
                reason = f"another run holds the training lock: {holder and holder['run_id']}"
                raise RunSkipped(reason) if run["trigger"] == "drift" else RunFailed(reason)
            await asyncio.sleep(self.settings.drift_poll_interval_s)

    async def _run(self, run: dict[str, Any], bound: Any, started: float) -> None:
        trigger = rebuild_trigger(run)
        check_family(run["params"], self.allowed_entry_points, run.get("allow_pickle", False))
        await self._set(
            run, state=RunState.WAITING_FOR_DATA.value, stage="load", started_at=self.clock()
        )
        bound.info("run.started", trigger=run["trigger"], family=run["params"].get("family"))
        ds = await self._load_dataset(run, trigger)
        timings = {"load_seconds": time.perf_counter() - started}
        await self._set(
            run, state=RunState.RUNNING.value, stage="train", data_ready_at=self.clock()
        )
        bound.info(
            "run.progress",
            stage="load",
            seconds=timings["load_seconds"],
            rows=ds.rows,
            features=len(ds.feature_names),
        )
        await self._refresh_lock(run)

        def progress(stage: str, seconds: float) -> None:
            bound.info("run.progress", stage=stage, seconds=seconds)

        result = await asyncio.to_thread(
            train_snapshot, ds, run["params"], run["seed"], None, progress
        )
        timings.update(result.timings)
        await self._set(run, stage="store", timings=timings)
        stored = time.perf_counter()
        event = await self._store_artifacts(run, trigger, result)
        timings["store_seconds"] = time.perf_counter() - stored
        bound.info("run.progress", stage="store", seconds=timings["store_seconds"])
        timings.update(
            wait_seconds=timings["load_seconds"],
            training_seconds=result.training_seconds,
            total_seconds=time.perf_counter() - started,
        )
        await self._set(
            run,
            state=RunState.SUCCEEDED.value,
            stage="done",
            finished_at=self.clock(),
            timings=timings,
            artifact=event.artifact.model_dump(),
            metrics=result.metrics,
            selection=result.selection,
            signature=result.signature,
            dataset=event.lineage.dataset.model_dump(),
            holdout=event.lineage.holdout.model_dump(),
            lineage=event.lineage.model_dump(mode="json"),
            model_trained_event_id=str(event.event_id),
            events=[event],
        )
        await self.events.notify()
        self._count(run, RunState.SUCCEEDED)
        if self.metrics:
            self.metrics.training_seconds.observe(result.training_seconds)
        bound.info(
            "run.succeeded",
            artifact_sha256=event.artifact.sha256,
            artifact_format=event.artifact.format,
            dataset_sha256=event.lineage.dataset.sha256,
            metrics=result.metrics,
            family=(result.selection or {}).get("chosen", run["params"].get("family")),
            **{k: round(v, 6) for k, v in timings.items()},
        )

    async def _load_dataset(self, run: dict[str, Any], trigger: Event) -> Dataset:
        """The run's data, read as its ``DataSpec`` says (recorded on the run with the task
        and where it came from)."""
        spec = await self._data_spec(run)
        if isinstance(trigger, DriftDetected):
            ds = await self._drift_feedback(run, trigger, spec)
        else:
            assert isinstance(trigger, TrainingRequested)
            if trigger.dataset_uri:
                ds = await self._dataset_from_store(trigger.dataset_uri, spec)
            else:
                rows = await self.feedback.complete_rows(
                    trigger.model_name, trigger.since, self.settings.feedback_max_rows
                )
                ds = feedback_dataset(rows, spec)
        run["params"]["task"] = ds.task  # the lineage names the task it was trained for
        await self._set(run, params=run["params"], data_spec=spec.record(ds))
        return ds

    async def _data_spec(self, run: dict[str, Any]) -> DataSpec:
        """The run's ``params.task`` and the champion's signature, read from the registry now.
        An unreachable registry leaves the params and the labels to decide (logged)."""
        champion = None
        if self.registry is not None:
            try:
                champion = await self.registry.champion(run["model_name"])
            except RegistryError as exc:
                log.warning("run.champion_unavailable", run_id=run["run_id"], error=str(exc))
        if champion is None:
            return data_spec(run["params"])
        return data_spec(run["params"], champion.signature, champion.version)

    async def _dataset_from_store(self, uri: str, spec: DataSpec) -> Dataset:
        key = object_key(uri, self.settings.bucket)
        try:
            data = await self.store.get(key)
        except ObjectNotFound as exc:
            raise RunFailed(f"dataset not found: {key}") from exc
        try:
            return await asyncio.to_thread(csv_dataset, data, spec)
        except DatasetError as exc:
            raise RunFailed(f"bad dataset {key}: {exc}") from exc

    async def _drift_feedback(
        self, run: dict[str, Any], event: DriftDetected, spec: DataSpec
    ) -> Dataset:
        """Wait for enough new-regime feedback, then take the drift data window (see
        ``domain.drift_back_rows``) and record it on the run."""
        s, model, at = self.settings, event.model_name, drift_onset(event)
        needed = ladder_rows(event, s.drift_min_rows, s.drift_max_rows)
        back = drift_back_rows(event, s.drift_window, s.drift_window_back_max_rows)
        deadline = refreshed = time.monotonic()
        deadline += s.drift_wait_timeout_s

        async def available() -> int:
            before = await self.feedback.count_complete(model, None, at) if back else 0
            return min(before, back) + await self.feedback.count_complete(model, at)

        count = await available()
        while count < needed:
            if time.monotonic() - refreshed > s.lock_ttl_s / 4:
                await self._refresh_lock(run)
                refreshed = time.monotonic()
            if time.monotonic() > deadline:
                raise RunFailed(
                    f"not enough feedback after the drift: {count} < {needed} rows "
                    f"within {s.drift_wait_timeout_s:.0f}s"
                )
            await asyncio.sleep(s.drift_poll_interval_s)
            count = await available()
        after = await self.feedback.complete_rows(model, at, s.drift_max_rows)
        before = await self.feedback.complete_rows(model, None, back, until=at) if back else []
        rows, used_back = drift_window_rows(before, after, s.drift_max_rows)
        window = window_record(event, s.drift_window, rows, used_back, s.drift_max_rows)
        window["needed_rows"] = needed
        await self._set(run, data_window=window)
        return feedback_dataset(rows, spec)

    async def _store_artifacts(
        self, run: dict[str, Any], trigger: Event, result: TrainingResult
    ) -> ModelTrained:
        """Store the snapshots and the artifact (content-addressed); the ModelTrained that
        announces them, to be written with the run's success."""
        model = run["model_name"]
        dataset = await self._put_snapshot(model, result.dataset_csv, result.dataset_rows, run)
        holdout = await self._put_snapshot(model, result.holdout_csv, result.holdout_rows, run)
        fmt = result.artifact_format
        check_pickle_allowed(fmt, run.get("allow_pickle", False))  # auto's candidates too
        artifact_uri = artifact_key(model, result.artifact_sha256, fmt)
        await self._put(run, artifact_uri, result.artifact, artifact_content_type(fmt))
        event = trigger.caused(
            ModelTrained,
            producer=PRODUCER,
            event_id=trained_event_id(run["run_id"]),
            model_name=model,
            run_id=run["run_id"],
            artifact=self.trust.sign(
                ArtifactRef(
                    uri=artifact_uri,
                    sha256=result.artifact_sha256,
                    size_bytes=len(result.artifact),
                    format=fmt,
                )
            ),
            feature_names=result.feature_names,
            metrics=result.metrics,
            lineage=Lineage(
                dataset=dataset,
                holdout=holdout,
                params=lineage_params(run, result.selection),
                seed=run["seed"],
                code_version=self.settings.code_version,
                parent_version=run["parent_version"],
                trigger=run["trigger"],
                trigger_event_id=trigger.event_id,
            ),
            reference={k: FeatureStats(**v) for k, v in result.reference.items()},
            training_seconds=result.training_seconds,
            signature=Signature.model_validate(result.signature) if result.signature else None,
        )
        return event

    async def _put_snapshot(
        self, model_name: str, csv: bytes, rows: int, run: dict[str, Any] | None = None
    ) -> DatasetRef:
        """Store a dataset (write-once: the same bytes are a no-op); a ``run``'s snapshot waits
        out a store outage, an upload through the API answers at once."""
        sha = sha256_hex(csv)
        key = dataset_key(model_name, sha)
        if run is None:
            await self.store.put_once(key, csv, "text/csv")
        else:
            await self._put(run, key, csv, "text/csv")
        return DatasetRef(uri=key, sha256=sha, rows=rows)

    async def _put(self, run: dict[str, Any], key: str, data: bytes, content_type: str) -> None:
        """Write what a finished run made; a store that does not answer is waited for (up to
        ``store_wait_s``, the run's lock kept fresh) rather than throwing the training away."""
        await outlast(
            lambda: self.store.put_once(key, data, content_type),
            what=f"object store: {key}",
            max_wait_s=self.settings.store_wait_s,
            on_wait=lambda: self._refresh_lock(run),
        )

    async def _refresh_lock(self, run: dict[str, Any]) -> None:
        """Keep a long wait from looking stale: the lock's age counts from the last refresh."""
        await self.locks.acquire(
            run["model_name"], run["run_id"], self.clock(), self.settings.lock_ttl_s
        )

    async def _set(
        self, run: dict[str, Any], *, events: Sequence[Event] = (), **fields: Any
    ) -> None:
        run.update(fields)
        await self.runs.update(run["run_id"], fields, events=events)

    async def _finish(
        self, run: dict[str, Any], state: RunState, reason: str, started: float
    ) -> None:
        await self._set(
            run,
            state=state.value,
            reason=reason,
            finished_at=self.clock(),
            timings={**run.get("timings", {}), "total_seconds": time.perf_counter() - started},
        )
        self._count(run, state)

    def _count(self, run: dict[str, Any], state: RunState) -> None:
        if self.metrics:
            self.metrics.runs.labels(state.value, run["trigger"]).inc()

    # -- queries ------------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        return await self.runs.get(run_id)

    async def list_runs(self, model_name: str | None, limit: int) -> list[dict[str, Any]]:
        return await self.runs.list(model_name, limit)

    # -- reproducibility ----------------------------------------------------------------------

    async def reproduce(self, run_id: str) -> dict[str, Any] | None:
        """Redo a succeeded run from its lineage (object storage only); None if no such run,
        ``ReproduceFailed`` if it cannot be redone. The outcome is recorded on the run."""
        run = await self.runs.get(run_id)
        if run is None:
            return None
        if run["state"] != RunState.SUCCEEDED.value or not run.get("lineage"):
            raise ReproduceFailed(f"run {run_id} is {run['state']}: nothing to reproduce")
        lineage = Lineage.model_validate(run["lineage"])
        expected = ArtifactRef.model_validate(run["artifact"])
        outcome = await redo(
            self.store,
            lineage,
            expected,
            code_version=self.settings.code_version,
            recorded=run.get("data_spec"),
        )
        outcome = {"run_id": run_id, **outcome, "at": self.clock().isoformat()}
        await self.runs.update(run_id, {"last_reproduction": outcome})
        log.info(
            "run.reproduced",
            run_id=run_id,
            matched=outcome["matched"],
            expected_sha256=outcome["expected_sha256"],
            actual_sha256=outcome["actual_sha256"],
        )
        return outcome


__all__ = ["TrainerMetrics", "TrainerService", "TrainingAccepted", "run_id_for"]
