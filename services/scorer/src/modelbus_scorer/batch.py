"""Batch scoring, the pure part: job records, file formats, and chunked vectorised scoring.

No network here. A ``ChunkedScorer`` takes the input file's bytes (CSV or Parquet), decodes it
chunk by chunk (``chunk_rows`` rows per chunk for Parquet, about that many for CSV), turns the
feature columns into one float matrix per chunk, predicts the whole chunk with numpy, and
appends ``score``, ``label``, ``model_version`` and ``error`` to an output file built in memory.

Rows are never silently dropped. A row whose feature value is missing, not a number or not
finite keeps its place in the output with ``score``/``label`` null and ``error`` saying which
feature and why (``income: not_a_number``). A CSV line that cannot even be split into the
header's columns goes to a side file (``<output stem>.errors.csv``: ``error``, ``text``). Both
count as ``failed_rows``.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from modelbus_contracts.envelope import is_model_name

JobState = Literal["queued", "running", "succeeded", "failed"]
Trigger = Literal["api", "event", "schedule"]
FileFormat = Literal["csv", "parquet"]

SCORE, LABEL, MODEL_VERSION, ERROR = "score", "label", "model_version", "error"
RESERVED = (SCORE, LABEL, MODEL_VERSION, ERROR)
EXTENSIONS: dict[str, FileFormat] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
MAX_CHUNK_TIMINGS = 500
NUMBER = r"(?i)^[+-]?((\d+(\.\d*)?|\.\d+)(e[+-]?\d+)?|inf|infinity|nan)$"
JOB_NAMESPACE = uuid.UUID("6f1d3a52-8c0e-4b7a-9a53-2f6c1b0d9e41")

# per-value codes, in the order their messages appear in ``REASONS``
OK, MISSING, NOT_A_NUMBER, NON_FINITE = 0, 1, 2, 3
REASONS = (None, "missing", "not_a_number", "non_finite")

Predict = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


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


def object_key(uri: str, bucket: str | None = None) -> str:
    """Accept a bare key, ``s3://<bucket>/<key>`` or ``/key``, and return the key."""
    if uri.startswith("s3://"):
        rest = uri[len("s3://") :]
        found, _, key = rest.partition("/")
        if bucket is not None and found != bucket:
            raise BadJob("bad_uri", f"{uri!r} is not in this scorer's bucket {bucket!r}")
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


# --- values ----------------------------------------------------------------------------------


def to_float(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A column as float64 plus a per-row code (OK, MISSING, NOT_A_NUMBER, NON_FINITE)."""
    values = float_values(column)
    return values, value_codes(column, values)


def _is_numeric(kind: pa.DataType) -> bool:
    return (
        pa.types.is_floating(kind)
        or pa.types.is_integer(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_decimal(kind)
    )


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def float_values(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """float64 values; anything that is not a usable number becomes NaN (the fast path: a
    float64 column without nulls is used in place)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    kind = column.type
    if pa.types.is_float64(kind) and column.null_count == 0:
        return column.to_numpy(zero_copy_only=False)
    if _is_numeric(kind):
        return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
    if _is_text(kind):
        trimmed = pc.utf8_trim_whitespace(column)
        try:  # every value parses
            return pc.cast(trimmed, pa.float64()).to_numpy(zero_copy_only=False)
        except pa.ArrowInvalid:
            kept = pc.if_else(_parses(trimmed), trimmed, pa.scalar(None, pa.string()))
            return pc.cast(kept, pa.float64()).to_numpy(zero_copy_only=False)
    return np.full(len(column), np.nan)


def _parses(trimmed: pa.Array) -> pa.Array:
    return pc.match_substring_regex(trimmed, NUMBER)


def value_codes(column: pa.Array | pa.ChunkedArray, values: np.ndarray) -> np.ndarray:
    """Why each value is (not) usable; only computed for a chunk that has bad rows."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    kind = column.type
    codes = np.where(np.isfinite(values), OK, NON_FINITE).astype(np.int8)
    if _is_text(kind):
        trimmed = pc.utf8_trim_whitespace(column)
        codes[~_parses(trimmed).fill_null(True).to_numpy(zero_copy_only=False)] = NOT_A_NUMBER
        codes[pc.equal(trimmed, "").fill_null(False).to_numpy(zero_copy_only=False)] = MISSING
    elif not _is_numeric(kind):
        codes[:] = MISSING if pa.types.is_null(kind) else NOT_A_NUMBER
    if column.null_count:
        codes[column.is_null().to_numpy(zero_copy_only=False)] = MISSING
    return codes


def row_errors(codes: np.ndarray, features: tuple[str, ...]) -> np.ndarray:
    """Per row, the first bad feature and why (``income: not_a_number``), or None."""
    reasons = np.full(codes.shape[1], None, dtype=object)
    for j in reversed(range(len(features))):
        bad = codes[j] != OK
        if bad.any():
            messages = np.array([None] + [f"{features[j]}: {r}" for r in REASONS[1:]], object)
            reasons = np.where(bad, messages[codes[j]], reasons)
    return reasons


@dataclass(frozen=True, slots=True)
class ChunkScore:
    table: pa.RecordBatch
    rows: int
    failed: int


def score_batch(
    batch: pa.RecordBatch,
    features: tuple[str, ...],
    predict: Predict,
    version: int,
    keep: list[str],
) -> ChunkScore:
    """Score one chunk: all valid rows in one predict call; bad rows get an error."""
    n = batch.num_rows
    columns = [batch.column(name) for name in features]
    X = np.column_stack([float_values(c) for c in columns]) if columns else np.empty((n, 0))
    valid = np.isfinite(X).all(axis=1)
    failed = int(n - np.count_nonzero(valid))
    if failed == 0:
        scores, labels = predict(X)
        score_col, label_col = pa.array(scores), pa.array(labels.astype(np.int64))
        error_col = pa.nulls(n, pa.string())
    else:
        scores, labels = np.zeros(n), np.zeros(n, dtype=np.int64)
        if valid.any():
            scores[valid], labels[valid] = predict(X[valid])
        score_col = pa.array(scores, mask=~valid)
        label_col = pa.array(labels.astype(np.int64), mask=~valid)
        codes = np.vstack([value_codes(c, X[:, j]) for j, c in enumerate(columns)])
        error_col = pa.array(row_errors(codes, features), pa.string())
    version_col = pa.array(np.full(n, version, dtype=np.int64))
    out = [batch.column(name) for name in keep] + [score_col, label_col, version_col, error_col]
    table = pa.RecordBatch.from_arrays(out, names=[*keep, *RESERVED])
    return ChunkScore(table, n, failed)


# --- files -----------------------------------------------------------------------------------


@dataclass
class MalformedLines:
    """CSV lines pyarrow could not split into the header's columns (skipped, but recorded)."""

    lines: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, row: pv.InvalidRow) -> str:
        reason = f"malformed_row: expected {row.expected_columns} columns, got {row.actual_columns}"
        self.lines.append((reason, row.text))
        return "skip"


def csv_header(data: bytes) -> list[str]:
    first = data.split(b"\n", 1)[0].decode("utf-8-sig").rstrip("\r")
    names = next(csv.reader([first]), [])
    if not names:
        raise BadJob("empty_input", "the CSV file has no header")
    if len(set(names)) != len(names):
        raise BadJob("bad_schema", f"duplicate column names in the CSV header: {names}")
    return names


def open_input(
    data: bytes, fmt: FileFormat, chunk_rows: int, malformed: MalformedLines
) -> tuple[pa.Schema, Iterator[pa.RecordBatch], int | None]:
    """The input schema, a chunk iterator and the row count (estimated for CSV)."""
    if fmt == "parquet":
        try:
            source = pq.ParquetFile(io.BytesIO(data))
        except (pa.ArrowInvalid, OSError) as exc:
            raise BadJob("unreadable_input", f"not a Parquet file: {exc}") from exc
        schema = source.schema_arrow
        return schema, source.iter_batches(batch_size=chunk_rows), source.metadata.num_rows
    names = csv_header(data)
    lines = max(data.count(b"\n") - 1 + (not data.endswith(b"\n")), 0)
    per_line = max(len(data) // max(lines, 1), 1)
    reader = pv.open_csv(
        io.BytesIO(data),
        read_options=pv.ReadOptions(block_size=max(per_line * chunk_rows, 1 << 16)),
        parse_options=pv.ParseOptions(invalid_row_handler=malformed),
        # every column as text: the output writes back exactly what came in, and a bad value in
        # a later block cannot break a type inferred from the first one
        convert_options=pv.ConvertOptions(
            column_types={name: pa.string() for name in names},
            null_values=[""],
            strings_can_be_null=True,
        ),
    )
    return pa.schema([(name, pa.string()) for name in names]), iter(reader), lines


class OutputWriter:
    """Builds the output file in memory, one chunk at a time."""

    def __init__(self, fmt: FileFormat) -> None:
        self.fmt = fmt
        self.sink = io.BytesIO()
        self._writer: pq.ParquetWriter | pv.CSVWriter | None = None

    def write(self, batch: pa.RecordBatch) -> None:
        if self._writer is None:
            if self.fmt == "parquet":
                # dictionary pages only where values repeat: trying them on scores and ids
                # (all distinct) costs more than the rest of the write
                dictionary = [LABEL, MODEL_VERSION, ERROR]
                self._writer = pq.ParquetWriter(self.sink, batch.schema, use_dictionary=dictionary)
            else:
                options = pv.WriteOptions(quoting_style="needed")
                self._writer = pv.CSVWriter(self.sink, batch.schema, write_options=options)
        self._writer.write_batch(batch)

    def finish(self, empty_schema: pa.Schema) -> bytes:
        if self._writer is None:  # no rows at all: still a valid file with the columns
            self.write(_empty(empty_schema))
        assert self._writer is not None
        self._writer.close()
        return self.sink.getvalue()


def _empty(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array([], f.type) for f in schema], schema=schema)


def errors_csv(lines: list[tuple[str, str]]) -> bytes:
    table = pa.table({ERROR: [r for r, _ in lines], "text": [t for _, t in lines]})
    sink = io.BytesIO()
    pv.write_csv(table, sink)
    return sink.getvalue()


# --- one job's scoring loop ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchOutput:
    data: bytes
    errors: bytes | None
    rows: int
    failed_rows: int


class ChunkedScorer:
    """Step through one input file: ``step()`` scores the next chunk (None when done),
    ``finish()`` returns the output bytes. Each call is CPU work meant for a worker thread."""

    def __init__(
        self,
        data: bytes,
        *,
        input_format: FileFormat,
        output_format: FileFormat,
        features: tuple[str, ...],
        predict: Predict,
        version: int,
        chunk_rows: int,
        id_column: str | None = "id",
    ) -> None:
        self.features = features
        self.predict = predict
        self.version = version
        self.malformed = MalformedLines()
        self.input_schema, self.chunks, self.rows_total = open_input(
            data, input_format, chunk_rows, self.malformed
        )
        names = self.input_schema.names
        check_schema(names, features)
        self.keep = [id_column] if id_column and id_column in names else list(names)
        self.writer = OutputWriter(output_format)
        self.rows = 0
        self.failed = 0
        self.index = 0

    def step(self) -> ChunkScore | None:
        try:
            batch = next(self.chunks, None)
        except pa.ArrowInvalid as exc:
            raise BadJob("unreadable_input", f"cannot decode the input: {exc}") from exc
        if batch is None:
            return None
        scored = score_batch(batch, self.features, self.predict, self.version, self.keep)
        self.writer.write(scored.table)
        self.rows += scored.rows
        self.failed += scored.failed
        self.index += 1
        return scored

    def finish(self) -> BatchOutput:
        schema = self._output_schema()
        data = self.writer.finish(schema)
        lines = self.malformed.lines
        errors = errors_csv(lines) if lines else None
        return BatchOutput(data, errors, self.rows + len(lines), self.failed + len(lines))

    def _output_schema(self) -> pa.Schema:
        fields = [self.input_schema.field(name) for name in self.keep]
        fields += [
            pa.field(SCORE, pa.float64()),
            pa.field(LABEL, pa.int64()),
            pa.field(MODEL_VERSION, pa.int64()),
            pa.field(ERROR, pa.string()),
        ]
        return pa.schema(fields)


def check_schema(names: list[str], features: tuple[str, ...]) -> None:
    clash = [n for n in names if n in RESERVED]
    if clash:
        raise BadJob("bad_schema", f"input columns {clash} clash with output columns {RESERVED}")
    missing = [f for f in features if f not in names]
    if missing:
        raise BadJob("missing_features", f"input lacks feature columns {missing}")


def score_file(data: bytes, **kwargs: object) -> BatchOutput:
    """The whole loop at once (tests, benchmark): step until done, then finish."""
    scorer = ChunkedScorer(data, **kwargs)  # type: ignore[arg-type]
    while scorer.step() is not None:
        pass
    return scorer.finish()
