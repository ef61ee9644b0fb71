"""Pure trainer logic: run identity and states, family and params resolution, drift guards and
the drift data window, feedback -> dataset, and the training computation itself (split, fit,
evaluate, serialise; timed stage by stage). No I/O here."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np

from modelbus_contracts import DriftDetected, Event, TrainingRequested
from modelbus_contracts.events import Signature
from modelbus_contracts.policy import TrainingPolicy
from modelbus_ml import Dataset, DatasetError, evaluate, feature_stats, split_holdout
from modelbus_ml.dataset import LABEL, TASKS, from_csv_bytes, from_rows, infer_kinds
from modelbus_ml.families import DEFAULT_FAMILY, FamilyError, get_family, train_family
from modelbus_ml.flavors import LOGREG_FORMAT, ONNX_FORMAT
from modelbus_ml.outputs import classes_of
from modelbus_platform.artifacts import PICKLE_REFUSED, pickled
from modelbus_platform.scheduler import Fire

if TYPE_CHECKING:
    from .config import ScheduleSpec

# Fixed namespace: run ids and ModelTrained event ids are derived from the trigger, so a
# re-delivered trigger (or a resumed run) maps onto the same ids.
NAMESPACE = uuid.UUID("5f0c6a52-9d8e-4a53-8f1e-6d0f1c2b7a11")


class RunState(StrEnum):
    PENDING = "pending"
    WAITING_FOR_DATA = "waiting_for_data"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


ACTIVE_STATES: tuple[str, ...] = (
    RunState.PENDING,
    RunState.WAITING_FOR_DATA,
    RunState.RUNNING,
)
TRIGGER_EVENTS: dict[str, type[Event]] = {
    TrainingRequested.event_type: TrainingRequested,
    DriftDetected.event_type: DriftDetected,
}


class RunFailed(Exception):
    """A run cannot complete; the message is the reason recorded on the run."""


class RunSkipped(RunFailed):
    """A run that should not happen (e.g. a drift run finding the model busy)."""


def run_id_for(trigger_event_id: uuid.UUID) -> str:
    return str(uuid.uuid5(NAMESPACE, str(trigger_event_id)))


def trained_event_id(run_id: str) -> uuid.UUID:
    """The ModelTrained event id of a run: stable, so a resumed run's re-publish is deduped."""
    return uuid.uuid5(NAMESPACE, f"{run_id}:model-trained")


def scheduled_event(fire: Fire[ScheduleSpec], producer: str = "trainer") -> TrainingRequested:
    """What a retraining schedule's cron fire publishes (reason ``schedule``). Its event id is the
    fire's deterministic id (two replicas firing the same time publish one event, deduped by the
    bus, and that maps onto one run id); without a dataset it trains on the feedback of the last
    ``since_hours`` before the fire time."""
    spec = fire.spec
    since = fire.at - timedelta(hours=spec.since_hours) if spec.since_hours else None
    return TrainingRequested(
        event_id=fire.id,
        producer=producer,
        model_name=fire.key,
        reason="schedule",
        dataset_uri=spec.dataset_uri,
        params=dict(spec.params),
        since=since if spec.dataset_uri is None else None,
    )


def dataset_key(model_name: str, sha256: str) -> str:
    return f"datasets/{model_name}/{sha256}.csv"


DATASET_KEY = re.compile(r"datasets/[^/]+/([0-9a-f]{64})\.csv")


def content_address(key: str) -> str | None:
    """The sha256 a content-addressed snapshot's key names (``dataset_key``), else None."""
    found = DATASET_KEY.fullmatch(key)
    return found.group(1) if found else None


ARTIFACT_SUFFIX = {LOGREG_FORMAT: "json", ONNX_FORMAT: "onnx"}


def artifact_key(model_name: str, sha256: str, format: str = LOGREG_FORMAT) -> str:
    """JSON artifacts end in ``.json``, ONNX ones in ``.onnx``, pickled ones (River, user
    models) in ``.pkl``."""
    return f"artifacts/{model_name}/{sha256}.{ARTIFACT_SUFFIX.get(format, 'pkl')}"


def artifact_content_type(format: str) -> str:
    return "application/json" if format == LOGREG_FORMAT else "application/octet-stream"


def object_key(uri: str, bucket: str) -> str:
    """Accept a bare key or ``s3://<bucket>/<key>`` and return the key."""
    prefix = f"s3://{bucket}/"
    return uri[len(prefix) :] if uri.startswith(prefix) else uri.lstrip("/")


def merge_params(
    requested: dict[str, Any] | None,
    model_defaults: dict[str, Any] | None = None,
    holdout_fraction: float = 0.25,
) -> dict[str, Any]:
    """A run's full params: family (request > model settings > logreg), that family's defaults,
    the model's configured params (only if they are for the same family), the request's params,
    the task (request > model settings, whatever the family) and the hold-out fraction.
    Unknown family names are kept: the run fails with the reason."""
    requested, model_defaults = dict(requested or {}), dict(model_defaults or {})
    family = str(requested.get("family") or model_defaults.get("family") or DEFAULT_FAMILY)
    same_family = str(model_defaults.get("family") or DEFAULT_FAMILY) == family
    try:
        base = dict(get_family(family).default_params)
    except FamilyError:
        base = {}
    task = requested.get("task") or model_defaults.get("task")  # the model's, whatever family
    return {
        "holdout_fraction": holdout_fraction,
        **base,
        **(model_defaults if same_family else {}),
        **requested,
        **({"task": task} if task else {}),
        "family": family,
    }


def training_defaults(
    configured: dict[str, Any] | None, live: TrainingPolicy | None
) -> dict[str, Any] | None:
    """A model's default run params: its live training policy (family, params, task) over the
    settings' ``model_params``; the configured params are kept only for the same family. An
    entry point is never allowed by a policy: only ``python_entry_points`` allow one."""
    if live is None or (live.family is None and not live.params and live.task is None):
        return configured
    configured = dict(configured or {})
    same = live.family is None or live.family == configured.get("family")
    family = {"family": live.family} if live.family else {}
    task = {"task": live.task} if live.task else {}
    return {**(configured if same else {}), **family, **live.params, **task}


def check_family(
    params: dict[str, Any], allowed_entry_points: set[str], allow_pickle: bool = False
) -> None:
    """RunFailed unless the family exists, a python entry point is allow-listed and, for a
    family whose artifact is a pickle, the model's policy allows pickles."""
    try:
        family = get_family(str(params.get("family", DEFAULT_FAMILY)))
    except FamilyError as exc:
        raise RunFailed(str(exc)) from exc
    if params.get("family") == "python" and params.get("entry_point") not in allowed_entry_points:
        raise RunFailed(
            f"python entry point {params.get('entry_point')!r} is not allowed "
            "(add it to python_entry_points or to the model's model_params)"
        )
    check_pickle_allowed(family.format, allow_pickle)


def check_pickle_allowed(artifact_format: str, allowed: bool) -> None:
    """RunFailed for a pickled artifact format the model's policy does not allow: no scorer
    would load it (``modelbus_platform.artifacts``), so it is not trained at all."""
    if pickled(artifact_format) and not allowed:
        raise RunFailed(PICKLE_REFUSED.format(format=artifact_format))


def trigger_kind(event: Event) -> str:
    if isinstance(event, DriftDetected):
        return "drift"
    if isinstance(event, TrainingRequested):
        return event.reason
    raise TypeError(f"not a training trigger: {type(event).__name__}")


def new_run(
    event: Event,
    *,
    default_seed: int,
    now: datetime,
    model_defaults: dict[str, Any] | None = None,
    holdout_fraction: float = 0.25,
) -> dict[str, Any]:
    """The run document for a trigger, in state ``pending``."""
    seed = default_seed
    params = merge_params(None, model_defaults, holdout_fraction)
    parent_version = None
    if isinstance(event, TrainingRequested):
        params = merge_params(event.params, model_defaults, holdout_fraction)
        seed = event.seed if event.seed is not None else default_seed
    elif isinstance(event, DriftDetected):
        parent_version = event.version
    return {
        "run_id": run_id_for(event.event_id),
        "model_name": event.model_name,
        "state": RunState.PENDING.value,
        "reason": None,
        "trigger": trigger_kind(event),
        "trigger_event_type": event.event_type,
        "trigger_event_id": str(event.event_id),
        "trigger_event": event.model_dump(mode="json"),
        "correlation_id": str(event.correlation_id),
        "params": params,
        "seed": seed,
        "parent_version": parent_version,
        "created_at": now,
        "stage": "pending",
        "started_at": None,
        "data_ready_at": None,
        "finished_at": None,
        "timings": {},
        "dataset": None,
        "holdout": None,
        "artifact": None,
        "metrics": None,
        "data_window": None,
        "lineage": None,
        "selection": None,
    }


def training_data(event: Event, dataset_sha256: str | None = None) -> dict[str, Any]:
    """What a trigger trains on, as far as telling two runs apart goes: a dataset's content
    (``dataset_sha256``: from its content address, or its bytes read at trigger time), else the
    feedback window it describes: ``since`` for a request, the incident's onset and the
    attempt (which sets how many rows it waits for) for a drift."""
    if isinstance(event, DriftDetected):
        return {"drift_onset": drift_onset(event).isoformat(), "attempt": int(event.attempt)}
    assert isinstance(event, TrainingRequested)
    if event.dataset_uri:
        if dataset_sha256 is not None:
            return {"dataset_sha256": dataset_sha256}
        return {"dataset_uri": event.dataset_uri, "missing": True}
    return {"feedback_since": event.since.isoformat() if event.since else None}


def dedupe_key(run: dict[str, Any], data: dict[str, Any]) -> str:
    """The identity of a training run: the same model, data (``training_data``), effective
    params (the request's over the model's policy and defaults) and seed give the same key,
    whatever triggered it (API, bus, schedule, drift)."""
    identity = {
        "model": run["model_name"],
        "data": data,
        "params": run["params"],
        "seed": run["seed"],
    }
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def run_claim(run: dict[str, Any]) -> dict[str, Any]:
    """The claim a run makes on its dedupe key (what a duplicate is answered with)."""
    return {
        "run_id": run["run_id"],
        "model_name": run["model_name"],
        "trigger": run["trigger"],
        "trigger_event_id": run["trigger_event_id"],
        "correlation_id": run["correlation_id"],
        "at": run["created_at"],
    }


def claim_lapsed(
    claim: dict[str, Any], claimant_state: str | None, now: datetime, window_s: float
) -> bool:
    """A claim no longer stands once it is ``window_s`` old, or when its run ended without
    success (failed or skipped: a retry must run). A claim whose run does not exist yet (the
    API claims before the event is consumed) stands."""
    if (now - claim["at"]).total_seconds() >= window_s:
        return True
    return claimant_state in (RunState.FAILED, RunState.SKIPPED)


def rebuild_trigger(run: dict[str, Any]) -> Event:
    event_cls = TRIGGER_EVENTS[run["trigger_event_type"]]
    return event_cls.model_validate(run["trigger_event"])


def cooldown_remaining(last_started: datetime | None, now: datetime, cooldown_s: float) -> float:
    """Seconds left before another drift run may start (0 when allowed)."""
    if last_started is None:
        return 0.0
    return max(0.0, cooldown_s - (now - last_started).total_seconds())


def drift_skip_reason(in_flight_run: str | None, cooldown_left: float) -> str | None:
    if in_flight_run is not None:
        return f"a run is already in flight for this model: {in_flight_run}"
    if cooldown_left > 0:
        return f"drift cooldown: {cooldown_left:.1f}s left"
    return None


@dataclass(frozen=True)
class DataSpec:
    """How a run reads its data: the task (``None``: inferred from the labels), the features'
    kinds by name (the rest inferred) and the classes that come first, in that order. Taken
    from the run's ``params.task`` (the request or the model's training policy) and from the
    champion's signature, so a retrain stays compatible with what is served: the same task, the
    same feature kinds, the champion's classes (new ones after them). ``task_from`` says where
    the task came from (``params``, ``champion``, ``labels``)."""

    task: str | None = None
    task_from: str = "labels"
    kinds: dict[str, str] = field(default_factory=dict)
    classes: tuple[str, ...] = ()
    champion_version: int | None = None
    # features the champion takes nulls for: its successor must take them too, whether or not
    # this run's rows have missing values
    nullable: frozenset[str] = frozenset()

    def record(self, ds: Dataset) -> dict[str, Any]:
        """What the run document keeps: the spec as applied to ``ds`` (enough to read its
        snapshot back the same way, see ``reproduce``)."""
        return {
            "task": ds.task,
            "task_from": self.task_from,
            "kinds": dict(zip(ds.feature_names, ds.feature_kinds, strict=True)),
            "classes": list(ds.classes),
            "champion_version": self.champion_version,
        }


def data_spec(
    params: dict[str, Any],
    champion: Signature | None = None,
    champion_version: int | None = None,
) -> DataSpec:
    """The run's ``DataSpec``. ``champion`` is the serving version's signature (a champion
    without one is an older binary model over numbers); a requested task that differs from
    the champion's fails the run: its versions could not replace each other."""
    requested = params.get("task")
    if requested is not None and requested not in TASKS:
        raise RunFailed(f"unknown task {requested!r}: one of {list(TASKS)}")
    if champion_version is None:
        return DataSpec(task=requested, task_from="params" if requested else "labels")
    task = champion.task if champion else "binary"
    if requested is not None and requested != task:
        raise RunFailed(
            f"task {requested!r} differs from the champion's {task!r} (v{champion_version}): "
            "a retrain must stay compatible with the version it replaces"
        )
    features = champion.features if champion else []
    return DataSpec(
        task=task,
        task_from="params" if requested else "champion",
        kinds={f.name: f.kind for f in features} or {},
        classes=tuple(champion.classes) if champion and task == "multiclass" else (),
        champion_version=champion_version,
        nullable=frozenset(f.name for f in features if f.nullable),
    )


def align_classes(ds: Dataset, classes: tuple[str, ...] | list[str]) -> Dataset:
    """``ds`` with ``classes`` first in its class order (then its own other classes): a
    retrain keeps the champion's classes, a reproduction the recorded order."""
    if ds.task != "multiclass" or not classes or tuple(classes) == ds.classes:
        return ds
    order = tuple(classes) + tuple(c for c in ds.classes if c not in classes)
    index = {c: i for i, c in enumerate(order)}
    remap = np.asarray([index[c] for c in ds.classes], dtype=np.int64)
    return replace(ds, y=remap[ds.y], classes=order)


def keep_nullable(ds: Dataset, spec: DataSpec) -> Dataset:
    """``ds`` told which features may be missing when served (the champion's nullable ones)."""
    if not spec.nullable:
        return ds
    return replace(ds, nullable=tuple(n in spec.nullable for n in ds.feature_names))


def feedback_dataset(rows: list[dict[str, Any]], spec: DataSpec | None = None) -> Dataset:
    """Build a dataset from joined feedback rows (oldest first). The first row fixes the
    feature names; rows missing one of them are left out (a null value is a missing value,
    kept). Kinds, task and classes follow ``spec``, the rest is inferred."""
    if not rows:
        raise RunFailed("no labelled feedback rows")
    spec = spec or DataSpec()
    names = tuple(rows[0]["features"])
    usable = [r for r in rows if all(n in r["features"] for n in names)]
    features = [r["features"] for r in usable]
    inferred = infer_kinds([[f[n] for f in features] for n in names])
    kinds = tuple(spec.kinds.get(n, k) for n, k in zip(names, inferred, strict=True))
    try:
        ds = from_rows(names, features, [r["label"] for r in usable], task=spec.task, kinds=kinds)
    except DatasetError as exc:
        raise RunFailed(f"unusable feedback: {exc}") from exc
    return keep_nullable(align_classes(ds, spec.classes), spec)


def csv_dataset(data: bytes, spec: DataSpec | None = None) -> Dataset:
    """A labelled CSV read as ``spec`` says (kinds of the columns it has, task, classes);
    ``DatasetError`` if it cannot be."""
    spec = spec or DataSpec()
    header = next(csv.reader(io.StringIO(data[:65536].decode("utf-8", "replace"))), [])
    kinds = {n: k for n, k in spec.kinds.items() if n in header and n != LABEL}
    ds = from_csv_bytes(data, task=spec.task, kinds=kinds or None)
    return keep_nullable(align_classes(ds, spec.classes), spec)


DRIFT_WINDOW_MODES = ("after_detection", "adwin")


def drift_onset(event: DriftDetected) -> datetime:
    """Where an incident's new-regime data starts: its first detection (``onset_at``, the same
    on every re-emission), so each attempt's window holds every row of the ones before."""
    return event.onset_at or event.detected_at


def ladder_rows(event: DriftDetected, min_rows: int, max_rows: int) -> int:
    """Rows an incident's retrain waits for: ``min_rows`` times the attempt (a ladder of
    growing windows: 400, 800, 1,200, ... by default), capped by the window size."""
    return max(2, min(min_rows * int(event.attempt), max_rows))


def drift_back_rows(event: DriftDetected, mode: str, cap: int) -> int:
    """How many feedback rows from just before ``detected_at`` a drift retrain may use.

    ``after_detection``: none, only rows predicted at or after ``detected_at``.
    ``adwin``: ADWIN cuts its window where the mean changed and keeps the points after the cut
    (``window_size``): those are attributed to the new regime, so the newest ``window_size`` rows
    before ``detected_at`` (at most ``cap``) are new-regime data too, and count towards
    ``drift_min_rows`` (the retrain starts sooner).
    """
    if mode not in DRIFT_WINDOW_MODES:
        raise RunFailed(f"unknown drift window mode {mode!r}")
    return min(int(event.window_size), cap) if mode == "adwin" else 0


def drift_window_rows(
    before: list[dict[str, Any]], after: list[dict[str, Any]], max_rows: int
) -> tuple[list[dict[str, Any]], int]:
    """The newest ``max_rows`` of before + after (oldest first) and how many came from before."""
    rows = (before + after)[-max_rows:] if max_rows > 0 else []
    return rows, max(0, len(rows) - len(after))


def window_record(
    event: DriftDetected, mode: str, rows: list[dict[str, Any]], back: int, max_rows: int
) -> dict[str, Any]:
    """What data a drift retrain used, for the run document and the lineage params."""
    times = [r["predicted_at"] for r in rows]
    return {
        "mode": mode,
        "attempt": int(event.attempt),
        "onset_at": drift_onset(event).isoformat(),
        "detected_at": event.detected_at.isoformat(),
        "adwin_window_size": int(event.window_size),
        "extended_back_rows": back,
        "after_rows": len(rows) - back,
        "rows": len(rows),
        "max_rows": max_rows,
        "first_predicted_at": min(times).isoformat() if times else None,
        "last_predicted_at": max(times).isoformat() if times else None,
    }


def lineage_params(run: dict[str, Any], selection: dict[str, Any] | None = None) -> dict[str, Any]:
    """The params recorded in the lineage: the run's params plus, for drift runs, the data
    window (``data_window``) and, when ``auto`` chose the family, the choice
    (``model_selection``). Reserved keys (family, entry_point, holdout_fraction, data_window,
    model_selection) are never passed to a fit."""
    params = dict(run["params"])
    if run.get("data_window"):
        params["data_window"] = run["data_window"]
    if selection:
        params["model_selection"] = selection
    return params


@dataclass(frozen=True)
class TrainingResult:
    """Everything a run produces, ready to be stored and announced."""

    dataset_csv: bytes
    holdout_csv: bytes
    dataset_rows: int
    holdout_rows: int
    artifact: bytes
    artifact_format: str
    feature_names: list[str]
    metrics: dict[str, float]
    reference: dict[str, dict]
    timings: dict[str, float] = field(default_factory=dict)
    selection: dict[str, Any] | None = None
    signature: dict[str, Any] | None = None

    @property
    def training_seconds(self) -> float:
        return self.timings.get("fit_seconds", 0.0)

    @property
    def dataset_sha256(self) -> str:
        return hashlib.sha256(self.dataset_csv).hexdigest()

    @property
    def holdout_sha256(self) -> str:
        return hashlib.sha256(self.holdout_csv).hexdigest()

    @property
    def artifact_sha256(self) -> str:
        return hashlib.sha256(self.artifact).hexdigest()


Progress = Callable[[str, float], None]


def _no_progress(stage: str, seconds: float) -> None:
    return None


def train_snapshot(
    ds: Dataset,
    params: dict[str, Any],
    seed: int,
    holdout_fraction: float | None = None,
    progress: Progress = _no_progress,
) -> TrainingResult:
    """Split, fit and evaluate deterministically: same data + params + seed -> same bytes.

    The family comes from ``params["family"]``; the hold-out fraction from the argument, else
    ``params["holdout_fraction"]``. ``progress(stage, seconds)`` is called after each stage.
    """
    if ds.rows < 4:
        raise RunFailed(f"dataset has {ds.rows} rows; at least 4 are needed")
    fraction = float(holdout_fraction or params.get("holdout_fraction", 0.25))
    timings: dict[str, float] = {}

    def timed(stage: str, started: float) -> None:
        timings[f"{stage}_seconds"] = time.perf_counter() - started
        progress(stage, timings[f"{stage}_seconds"])

    try:
        started = time.perf_counter()
        train, holdout = split_holdout(ds, fraction, seed)
        timed("split", started)
        started = time.perf_counter()
        trained = train_family(train, params, seed)
        timed("fit", started)
        started = time.perf_counter()
        metrics = evaluate(trained.model, holdout)
        reference = feature_stats(train)
        signature = trained_signature(ds, trained.model)
        timed("evaluate", started)
    except (DatasetError, FamilyError, ValueError, KeyError, TypeError) as exc:
        raise RunFailed(f"training failed: {exc}") from exc
    return TrainingResult(
        dataset_csv=ds.to_csv_bytes(),
        holdout_csv=holdout.to_csv_bytes(),
        dataset_rows=ds.rows,
        holdout_rows=holdout.rows,
        artifact=trained.artifact,
        artifact_format=trained.format,
        feature_names=list(trained.model.feature_names),
        metrics=metrics,
        reference=reference,
        timings=timings,
        selection=trained.selection,
        signature=signature,
    )


def trained_signature(ds: Dataset, model: Any) -> dict[str, Any]:
    """A new version's signature: the training data's features (kinds, nullable, categories
    seen) and task; a multiclass model's classes are those it learned, in its output order."""
    signature = ds.signature()
    if ds.task == "multiclass":
        signature["classes"] = list(classes_of(model))
    return signature
