"""Batch scoring, the vectorised core: a file's bytes in, the scored file's bytes out (no I/O).

A ``ChunkedScorer`` takes the input file's bytes (CSV or Parquet), decodes it chunk by chunk
(``chunk_rows`` rows per chunk for Parquet, about that many for CSV), turns the feature columns
into one matrix per chunk, predicts the whole chunk at once, and appends the model's outputs,
``model_version`` and ``error`` to an output file built in memory. The outputs depend on the
task: binary ``score``, ``label``; multiclass ``label``, ``score`` (its probability) and one
``p_<class>`` per class; regression ``value``.

A model whose features are all numbers that may not be missing reads each column as floats
with arrow (vectorised); any other model reads each cell by its signature with the rules the
scorer applies to requests (``modelbus_ml.inputs``: a CSV cell stands for the JSON value a
request would carry; an empty cell is null).

Rows are never silently dropped. A row whose feature value is refused (missing, not a number,
not finite, not a category, null where the feature is not nullable) keeps its place in the
output with its outputs null and ``error`` saying which feature and why
(``income: not_a_number``). A CSV line that cannot even be split into the
header's columns goes to a side file (``<output stem>.errors.csv``: ``error``, ``text``). Both
count as ``failed_rows``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv
import pyarrow.parquet as pq

from modelbus_ml.inputs import BadValue, InputSpec, check_value, from_text
from modelbus_ml.outputs import Outputs
from modelbus_ml.serving import Served

from .domain import BadJob, FileFormat

SCORE, LABEL, VALUE, MODEL_VERSION, ERROR = "score", "label", "value", "model_version", "error"
RESERVED = (SCORE, LABEL, VALUE, MODEL_VERSION, ERROR)
PROBABILITY_PREFIX = "p_"
NUMBER = r"(?i)^[+-]?((\d+(\.\d*)?|\.\d+)(e[+-]?\d+)?|inf|infinity|nan)$"

# per-value codes, in the order their messages appear in ``REASONS``
OK, MISSING, NOT_A_NUMBER, NON_FINITE = 0, 1, 2, 3
REASONS = (None, "missing", "not_a_number", "non_finite")


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


def parse_cells(batch: pa.RecordBatch, spec: InputSpec) -> tuple[np.ndarray, np.ndarray]:
    """The general path: every cell by its feature's rules. Returns the matrix (refused values
    as NaN / None) and per row the first refused feature and why, or None."""
    n = batch.num_rows
    X = spec.empty(n)
    errors = np.full(n, None, dtype=object)
    for j, (name, kind, nullable) in enumerate(spec.features()):
        blank = math.nan if kind == "number" else None
        values = []
        for i, cell in enumerate(batch.column(name).to_pylist()):
            try:
                values.append(check_value(from_text(cell, kind), kind, nullable))
            except BadValue as exc:
                values.append(blank)
                if errors[i] is None:
                    errors[i] = f"{name}: {exc.reason}"
        X[:, j] = values
    return X, errors


def output_fields(task: str, classes: tuple[str, ...]) -> list[pa.Field]:
    """The columns a model's outputs take, by task."""
    if task == "binary":
        return [pa.field(SCORE, pa.float64()), pa.field(LABEL, pa.int64())]
    if task == "regression":
        return [pa.field(VALUE, pa.float64())]
    return [
        pa.field(LABEL, pa.string()),
        pa.field(SCORE, pa.float64()),
        *[pa.field(f"{PROBABILITY_PREFIX}{c}", pa.float64()) for c in classes],
    ]


def output_arrays(
    fields: list[pa.Field], outputs: Outputs | None, valid: np.ndarray | None, n: int
) -> list[pa.Array]:
    """The outputs as columns of ``fields``; ``valid``: which of the ``n`` rows were scored
    (None: all of them), the others null."""
    if outputs is None:
        return [pa.nulls(n, f.type) for f in fields]
    by_name: dict[str, np.ndarray] = {}
    if outputs.task == "regression":
        by_name[VALUE] = outputs.values  # type: ignore[assignment]
    else:
        by_name[SCORE] = outputs.scores  # type: ignore[assignment]
        by_name[LABEL] = outputs.labels  # type: ignore[assignment]
        if outputs.proba is not None:
            for j, c in enumerate(outputs.classes):
                by_name[f"{PROBABILITY_PREFIX}{c}"] = outputs.proba[:, j]
    arrays = []
    for f in fields:
        values = by_name[f.name]
        if valid is None:
            arrays.append(pa.array(values, f.type))
            continue
        full = (
            np.full(n, None, dtype=object) if values.dtype == object else np.zeros(n, values.dtype)
        )
        full[valid] = values
        arrays.append(pa.array(full, f.type, mask=~valid))
    return arrays


@dataclass(frozen=True, slots=True)
class ChunkScore:
    table: pa.RecordBatch
    rows: int
    failed: int


def score_batch(
    batch: pa.RecordBatch,
    served: Served,
    keep: list[str],
    fields: list[pa.Field] | None = None,
) -> ChunkScore:
    """Score one chunk: all valid rows in one predict call; bad rows get an error."""
    n = batch.num_rows
    fields = fields or output_fields(served.task, served.classes)
    if served.numeric:
        columns = [batch.column(name) for name in served.feature_names]
        X = np.column_stack([float_values(c) for c in columns]) if columns else np.empty((n, 0))
        valid = np.isfinite(X).all(axis=1)
        errors = None
    else:
        X, errors = parse_cells(batch, InputSpec.of(served))
        valid = np.fromiter((e is None for e in errors), dtype=bool, count=n)
    failed = int(n - np.count_nonzero(valid))
    if failed == 0:
        outputs_cols = output_arrays(fields, served.score(X), None, n)
        error_col = pa.nulls(n, pa.string())
    else:
        outputs = served.score(X[valid]) if valid.any() else None
        outputs_cols = output_arrays(fields, outputs, valid, n)
        if errors is None:
            codes = np.vstack([value_codes(c, X[:, j]) for j, c in enumerate(columns)])
            errors = row_errors(codes, served.feature_names)
        error_col = pa.array(errors, pa.string())
    version_col = pa.array(np.full(n, served.version, dtype=np.int64))
    out = [batch.column(name) for name in keep] + [*outputs_cols, version_col, error_col]
    names = [*keep, *(f.name for f in fields), MODEL_VERSION, ERROR]
    table = pa.RecordBatch.from_arrays(out, names=names)
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
        served: Served,
        chunk_rows: int,
        id_column: str | None = "id",
    ) -> None:
        self.served = served
        self.fields = output_fields(served.task, served.classes)
        self.malformed = MalformedLines()
        self.input_schema, self.chunks, self.rows_total = open_input(
            data, input_format, chunk_rows, self.malformed
        )
        names = self.input_schema.names
        check_schema(names, served.feature_names, [f.name for f in self.fields])
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
        scored = score_batch(batch, self.served, self.keep, self.fields)
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
            *self.fields,
            pa.field(MODEL_VERSION, pa.int64()),
            pa.field(ERROR, pa.string()),
        ]
        return pa.schema(fields)


def check_schema(names: list[str], features: tuple[str, ...], outputs: list[str]) -> None:
    written = [*outputs, MODEL_VERSION, ERROR]
    clash = [n for n in names if n in RESERVED or n in written]
    if clash:
        raise BadJob("bad_schema", f"input columns {clash} clash with output columns {written}")
    missing = [f for f in features if f not in names]
    if missing:
        raise BadJob("missing_features", f"input lacks feature columns {missing}")


def score_file(data: bytes, **kwargs: object) -> BatchOutput:
    """The whole loop at once (tests, benchmark): step until done, then finish."""
    scorer = ChunkedScorer(data, **kwargs)  # type: ignore[arg-type]
    while scorer.step() is not None:
        pass
    return scorer.finish()
