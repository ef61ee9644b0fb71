"""Pure trainer logic: run identity and states, drift guards, feedback -> dataset, and the
training computation itself (split, fit, evaluate, serialise). No I/O here."""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import numpy as np

from modelbus_contracts import DriftDetected, Event, TrainingRequested
from modelbus_ml import Dataset, DatasetError, evaluate, feature_stats, split_holdout, train_logreg
from modelbus_ml.logreg import DEFAULT_PARAMS

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


def dataset_key(model_name: str, sha256: str) -> str:
    return f"datasets/{model_name}/{sha256}.csv"


def artifact_key(model_name: str, sha256: str) -> str:
    return f"artifacts/{model_name}/{sha256}.json"


def object_key(uri: str, bucket: str) -> str:
    """Accept a bare key or ``s3://<bucket>/<key>`` and return the key."""
    prefix = f"s3://{bucket}/"
    return uri[len(prefix) :] if uri.startswith(prefix) else uri.lstrip("/")


def merge_params(requested: dict[str, Any] | None) -> dict[str, Any]:
    return {**DEFAULT_PARAMS, **(requested or {})}


def trigger_kind(event: Event) -> str:
    if isinstance(event, DriftDetected):
        return "drift"
    if isinstance(event, TrainingRequested):
        return event.reason
    raise TypeError(f"not a training trigger: {type(event).__name__}")


def new_run(event: Event, *, default_seed: int, now: datetime) -> dict[str, Any]:
    """The run document for a trigger, in state ``pending``."""
    seed = default_seed
    params = merge_params(None)
    parent_version = None
    if isinstance(event, TrainingRequested):
        params = merge_params(event.params)
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
        "started_at": None,
        "data_ready_at": None,
        "finished_at": None,
        "timings": {},
        "dataset": None,
        "holdout": None,
        "artifact": None,
        "metrics": None,
    }


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


def feedback_dataset(rows: list[dict[str, Any]]) -> Dataset:
    """Build a dataset from joined feedback rows (oldest first). The first row fixes the
    feature names; rows missing one of them are left out."""
    if not rows:
        raise RunFailed("no labelled feedback rows")
    names = tuple(rows[0]["features"])
    usable = [r for r in rows if all(n in r["features"] for n in names)]
    X = np.array([[float(r["features"][n]) for n in names] for r in usable], dtype=np.float64)
    y = np.array([int(r["label"]) for r in usable], dtype=np.int8)
    return Dataset(names, X.reshape(-1, len(names)), y)


@dataclass(frozen=True)
class TrainingResult:
    """Everything a run produces, ready to be stored and announced."""

    dataset_csv: bytes
    holdout_csv: bytes
    dataset_rows: int
    holdout_rows: int
    artifact: bytes
    feature_names: list[str]
    metrics: dict[str, float]
    reference: dict[str, dict]
    training_seconds: float

    @property
    def dataset_sha256(self) -> str:
        return hashlib.sha256(self.dataset_csv).hexdigest()

    @property
    def holdout_sha256(self) -> str:
        return hashlib.sha256(self.holdout_csv).hexdigest()

    @property
    def artifact_sha256(self) -> str:
        return hashlib.sha256(self.artifact).hexdigest()


def train_snapshot(
    ds: Dataset, params: dict[str, Any], seed: int, holdout_fraction: float
) -> TrainingResult:
    """Split, fit and evaluate deterministically: same data + params + seed -> same bytes."""
    if ds.rows < 4:
        raise RunFailed(f"dataset has {ds.rows} rows; at least 4 are needed")
    try:
        train, holdout = split_holdout(ds, holdout_fraction, seed)
        started = time.perf_counter()
        model = train_logreg(train, params, seed)
        seconds = time.perf_counter() - started
    except (DatasetError, ValueError, KeyError, TypeError) as exc:
        raise RunFailed(f"training failed: {exc}") from exc
    return TrainingResult(
        dataset_csv=ds.to_csv_bytes(),
        holdout_csv=holdout.to_csv_bytes(),
        dataset_rows=ds.rows,
        holdout_rows=holdout.rows,
        artifact=model.to_bytes(),
        feature_names=list(model.feature_names),
        metrics=evaluate(model, holdout),
        reference=feature_stats(train),
        training_seconds=seconds,
    )
