"""Batch jobs, the pure part: job records, ids, where a job reads and writes, and what a cron
fire asks for. No I/O here.

A job scores one file in object storage (CSV or Parquet, by extension) with a model's champion
or a named version, and writes the output next to the input (``<stem>.scores.<ext>``) or at
``output_uri``. Job ids are the idempotency key; the ids of a job's events and of a cron fire's
job derive from them deterministically, so a re-run or a second replica changes nothing.

Where a job may read and write is bounded (``StoreBounds``): a uri is a plain object key or
``s3://<the service's bucket>/<key>``, nothing else (no other scheme or bucket, no absolute path,
no ``..``, no control characters), an input lies under one of the configured input prefixes and
an output under one of the output prefixes, never under ``datasets/`` or ``artifacts/`` (those
are write-once and content-addressed: a batch output there would make a record lie). The checks
run when a job is accepted and again before it reads and writes, so a job recorded before the
bounds changed cannot write outside them either.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from modelbus_contracts import BatchScoringRequested
from modelbus_contracts.envelope import is_model_name
from modelbus_platform.scheduler import CronSpec, Fire
from modelbus_platform.stores import CONTENT_ADDRESSED_PREFIXES, is_content_addressed

JobState = Literal["queued", "running", "succeeded", "failed"]
Trigger = Literal["api", "event", "schedule"]
FileFormat = Literal["csv", "parquet"]

EXTENSIONS: dict[str, FileFormat] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
CONTENT_TYPES: dict[FileFormat, str] = {
    "csv": "text/csv",
    "parquet": "application/vnd.apache.parquet",
}
MAX_CHUNK_TIMINGS = 500
DEFAULT_PREFIXES = ("batch/", "in/", "out/")
MAX_KEY_BYTES = 1024  # S3's limit on a key
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
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


def _shown(uri: str) -> str:
    return repr(uri[:200] + ("..." if len(uri) > 200 else ""))


def object_key(uri: str, bucket: str | None = None) -> str:
    """Accept a plain key or ``s3://<bucket>/<key>`` in ``bucket`` (none: no s3 uri) and return
    the key; ``BadJob`` for anything else: another scheme (``bad_scheme``: file://, http://, ...),
    another bucket (``wrong_bucket``), or a key that is not a clean relative one (``bad_uri``:
    absolute, empty, ``.``/``..``/empty segments, backslashes, control or invisible characters,
    over 1024 bytes). Nothing is rewritten into a key: what is refused is said."""
    if any(unicodedata.category(c).startswith("C") for c in uri):
        raise BadJob("bad_uri", f"{_shown(uri)} contains control or invisible characters")
    key = uri
    if uri.startswith("s3://"):
        found, _, key = uri[len("s3://") :].partition("/")
        if bucket is None or found != bucket:
            where = f"this service's bucket {bucket!r}" if bucket else "no bucket (local store)"
            raise BadJob("wrong_bucket", f"{_shown(uri)} is not in {where}")
    if _SCHEME.match(key) or key.startswith("//"):
        allowed = f"s3://{bucket}/<key>" if bucket else "object keys"
        raise BadJob("bad_scheme", f"{_shown(uri)}: only {allowed} and plain object keys")
    if key.startswith("/"):
        raise BadJob("bad_uri", f"{_shown(uri)}: an absolute path, not an object key")
    if "\\" in key or any(part in ("", ".", "..") for part in key.split("/")):
        raise BadJob("bad_uri", f"not an object key: {_shown(uri)}")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise BadJob("bad_uri", f"{_shown(uri)}: keys are at most {MAX_KEY_BYTES} bytes")
    return key


def _prefix(prefix: str) -> str:
    """A configured prefix, checked like a key and ending in ``/`` (``in`` -> ``in/``, so that
    ``data`` can never cover ``datasets/``)."""
    try:
        return object_key(prefix.rstrip("/")) + "/"
    except BadJob as exc:
        raise ValueError(f"bad store prefix {prefix!r}: {exc.message}") from exc


@dataclass(frozen=True)
class StoreBounds:
    """Where jobs may read (``inputs``) and write (``outputs``): key prefixes of the service's
    ``bucket``. No output prefix may cover or lie under ``datasets/`` or ``artifacts/``."""

    bucket: str | None = None
    inputs: Sequence[str] = DEFAULT_PREFIXES
    outputs: Sequence[str] = DEFAULT_PREFIXES

    def __post_init__(self) -> None:
        inputs = tuple(dict.fromkeys(_prefix(p) for p in self.inputs))
        outputs = tuple(dict.fromkeys(_prefix(p) for p in self.outputs))
        if not inputs or not outputs:
            raise ValueError("at least one input and one output prefix are needed")
        for prefix in outputs:
            folded = prefix.lower()  # a case-insensitive local folder maps Datasets/ to datasets/
            if any(
                folded.startswith(p) or p.startswith(folded) for p in CONTENT_ADDRESSED_PREFIXES
            ):
                raise ValueError(
                    f"output prefix {prefix!r} overlaps datasets/ or artifacts/ (write-once)"
                )
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "outputs", outputs)

    def input_key(self, uri: str) -> str:
        key = object_key(uri, self.bucket)
        if not key.startswith(tuple(self.inputs)):
            raise BadJob(
                "outside_prefixes",
                f"input {_shown(uri)} is not under an input prefix {list(self.inputs)}",
            )
        return key

    def output_key(self, uri: str) -> str:
        key = object_key(uri, self.bucket)
        if is_content_addressed(key.lower()):
            raise BadJob(
                "protected_prefix",
                f"output {_shown(uri)}: datasets/ and artifacts/ are write-once, never outputs",
            )
        if not key.startswith(tuple(self.outputs)):
            raise BadJob(
                "outside_prefixes",
                f"output {_shown(uri)} is not under an output prefix {list(self.outputs)}",
            )
        return key


def job_keys(input_uri: str, output_uri: str | None, bounds: StoreBounds) -> tuple[str, str, str]:
    """(input key, output uri, output key) of a job, its default output resolved; ``BadJob``
    if either lies outside ``bounds``, has no known format, or they are the same object."""
    input_key = bounds.input_key(input_uri)
    file_format(input_uri)
    output_uri = output_uri or default_output_uri(input_uri)
    output_key = bounds.output_key(output_uri)
    file_format(output_uri)
    if output_key == input_key:
        raise BadJob("bad_uri", "output_uri must differ from input_uri")
    return input_key, output_uri, output_key


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
