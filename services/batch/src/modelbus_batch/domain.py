"""Batch jobs, the pure part: job records, ids, where a job reads and writes, and what a cron
fire asks for. No I/O here.

A job scores one file in object storage (CSV or Parquet, by extension) with a model's champion
or a named version, and writes the output next to the input (``<stem>.scores.<ext>``) or at
``output_uri``. Job ids are the idempotency key; the ids of a job's events and of a cron fire's
job derive from them deterministically, so a re-run or a second replica changes nothing.
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, Field

from modelbus_contracts import BatchScoringRequested
from modelbus_contracts.envelope import is_model_name
from modelbus_platform.scheduler import CronSpec, Fire

JobState = Literal["queued", "running", "succeeded", "failed"]
Trigger = Literal["api", "event", "schedule"]
FileFormat = Literal["csv", "parquet"]

EXTENSIONS: dict[str, FileFormat] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
CONTENT_TYPES: dict[FileFormat, str] = {
    "csv": "text/csv",
    "parquet": "application/vnd.apache.parquet",
}
MAX_CHUNK_TIMINGS = 500
JOB_NAMESPACE = uuid.UUID("6f1d3a52-8c0e-4b7a-9a53-2f6c1b0d9e41")
SCHEDULE_NAMESPACE = uuid.UUID("0b6c8e2e-3f0c-4a51-9c1e-5d0a8f7b2c93")


class BadJob(ValueError):
    """A job that cannot run as asked (bad uri, unknown format, input schema); ``reason`` is a
    short code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# --- job records -----------------------------------------------------------------------------


class ChunkTiming(BaseModel):
    index: int
    rows: int
    failed: int
    seconds: float


class BatchJob(BaseModel):
    """One batch job as stored and shown by ``GET /batch-jobs/{job_id}``; times are epoch s."""

    job_id: str
    model_name: str
    input_uri: str
    output_uri: str
    requested_version: int | None = Field(default=None, description="None: the champion")
    version: int | None = Field(default=None, description="the version that scored")
    trigger: Trigger
    state: JobState = "queued"
    instance: str = ""
    correlation_id: str
    causation_id: str | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    rows_total: int | None = Field(default=None, description="exact for Parquet, estimated CSV")
    rows_done: int = 0
    failed_rows: int = 0
    errors_uri: str | None = None
    chunks: list[ChunkTiming] = Field(default_factory=list)
    seconds: float | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("succeeded", "failed")


def new_job_id() -> str:
    return uuid.uuid4().hex


def event_job_id(job_id: str, kind: str) -> uuid.UUID:
    """Deterministic event ids for a job's events: a re-run re-emits the same ids."""
    return uuid.uuid5(JOB_NAMESPACE, f"{kind}/{job_id}")


def check_model_name(name: str) -> None:
    if not is_model_name(name):
        raise BadJob("bad_model_name", f"invalid model name {name!r}")


# --- where a job reads and writes ------------------------------------------------------------


def object_key(uri: str, bucket: str | None = None) -> str:
    """Accept a bare key, ``s3://<bucket>/<key>`` or ``/key``, and return the key."""
    if uri.startswith("s3://"):
        rest = uri[len("s3://") :]
        found, _, key = rest.partition("/")
        if bucket is not None and found != bucket:
            raise BadJob("bad_uri", f"{uri!r} is not in this service's bucket {bucket!r}")
        uri = key
    key = uri.lstrip("/")
    if not key or key.endswith("/") or ".." in key.split("/"):
        raise BadJob("bad_uri", f"not an object key: {uri!r}")
    return key


def file_format(uri: str) -> FileFormat:
    lower = uri.lower()
    for ext, fmt in EXTENSIONS.items():
        if lower.endswith(ext):
            return fmt
    raise BadJob("unknown_format", f"{uri!r}: expected a .csv, .parquet or .pq file")


def default_output_uri(input_uri: str) -> str:
    """``data/in.parquet`` -> ``data/in.scores.parquet`` (next to the input, same format)."""
    fmt = file_format(input_uri)
    head, _, _ = input_uri.rpartition(".")
    return f"{head}.scores.{'csv' if fmt == 'csv' else 'parquet'}"


def errors_uri_for(output_uri: str) -> str:
    head, _, _ = output_uri.rpartition(".")
    return f"{head}.errors.csv"


# --- schedules -------------------------------------------------------------------------------


class BatchSchedule(CronSpec):
    """A model's cron batch job: when (``cron``, UTC) and which file to score."""

    input_uri: str = Field(description="object key (or s3://bucket/key) of a .csv or .parquet")
    output_uri: str | None = Field(default=None, description="default: next to the input")
    version: int | None = Field(default=None, ge=1, description="default: the champion")


def fire_job_id(fire_id: uuid.UUID) -> str:
    """A cron fire's job id: every replica firing the same schedule asks for the same job."""
    return f"cron-{fire_id.hex}"


def scheduled_request(fire: Fire[BatchSchedule], producer: str) -> BatchScoringRequested:
    """What a cron fire publishes: a request with a fresh correlation id and deterministic job
    and event ids, handled like any other by one batch instance."""
    job_id = fire_job_id(fire.id)
    return BatchScoringRequested(
        event_id=event_job_id(job_id, BatchScoringRequested.event_type),
        producer=producer,
        model_name=fire.key,
        job_id=job_id,
        input_uri=fire.spec.input_uri,
        output_uri=fire.spec.output_uri,
        version=fire.spec.version,
    )
