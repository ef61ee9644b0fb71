"""Labelled tabular datasets of every task (binary, multiclass, regression) over number and
category features, missing values allowed: canonical CSV bytes (so a snapshot's sha256 names
its content), deterministic hold-out splits and per-feature summary statistics (the monitor's
reference)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

LABEL = "label"
TASKS = ("binary", "multiclass", "regression")  # contracts.Task
NUMBER, CATEGORY = "number", "category"  # contracts.FeatureKind
MAX_CLASSES = 1000
# integer labels with at most this many distinct values are classes, more are a regression
MAX_INFERRED_CLASSES = 20
MAX_CATEGORY_LENGTH = 1000
# A column name becomes a feature name, a signature's field, a key of the monitor's reference
# and of every document that records it: 1..200 characters (contracts.FeatureSpec's limit)
# with no control character (a NUL is refused by BSON keys, tabs and newlines break logs).
MAX_NAME_LENGTH = 200
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class DatasetError(ValueError):
    pass


@dataclass(frozen=True)
class Dataset:
    """Labelled rows. ``X`` is float64 when every feature is a number (NaN: missing), else an
    object array (numbers as floats with NaN for missing, categories as ``str`` with ``None``
    for missing). ``y``: binary int8 in {0, 1}; multiclass int64 indexes into ``classes``;
    regression float64."""

    feature_names: tuple[str, ...]
    X: np.ndarray  # shape (rows, features)
    y: np.ndarray  # shape (rows,)
    task: str = "binary"
    classes: tuple[str, ...] = ()  # multiclass: the class labels, in index order
    kinds: tuple[str, ...] = ()  # per feature: number | category (empty: all numbers)
    # per feature: may be missing when served even if no value is missing here (a retrain of
    # a champion that takes nulls must take them too); empty: only what the data shows
    nullable: tuple[bool, ...] = ()

    def __post_init__(self) -> None:
        if self.X.ndim != 2 or self.X.shape[1] != len(self.feature_names):
            raise DatasetError(
                f"X has shape {self.X.shape}, expected (n, {len(self.feature_names)})"
            )
        if self.y.shape != (self.X.shape[0],):
            raise DatasetError("y must have one label per row")
        if self.task not in TASKS:
            raise DatasetError(f"task must be one of {list(TASKS)}, got {self.task!r}")
        if self.kinds and len(self.kinds) != len(self.feature_names):
            raise DatasetError("kinds must give one kind per feature")
        if self.nullable and len(self.nullable) != len(self.feature_names):
            raise DatasetError("nullable must say it for every feature")
        if self.task == "multiclass" and len(self.classes) < 2:
            raise DatasetError("a multiclass dataset needs at least two classes")

    @property
    def rows(self) -> int:
        return int(self.X.shape[0])

    @property
    def feature_kinds(self) -> tuple[str, ...]:
        return self.kinds or (NUMBER,) * len(self.feature_names)

    @property
    def numeric(self) -> bool:
        """Every feature a number (X is a float matrix)."""
        return all(k == NUMBER for k in self.feature_kinds)

    @property
    def complete(self) -> bool:
        """No missing value anywhere."""
        if self.numeric:
            return bool(np.isfinite(self.X).all())
        return not any(_missing(v) for v in self.X.ravel().tolist())

    @property
    def may_miss(self) -> bool:
        """A value may be missing: here, or when served (``nullable``)."""
        return any(self.nullable) or not self.complete

    def label_of(self, i: int) -> int | float | str:
        """Row ``i``'s label as it travels (binary 0/1, the class, or the value)."""
        v = self.y[i]
        if self.task == "multiclass":
            return self.classes[int(v)]
        return float(v) if self.task == "regression" else int(v)

    def to_csv_bytes(self) -> bytes:
        """Canonical CSV: header, then rows with Python's round-trip float repr (an empty cell
        is a missing value)."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([*self.feature_names, LABEL])
        kinds = self.feature_kinds
        labels = self._label_cells()
        for row, label in zip(self.X.tolist(), labels, strict=True):
            cells = [_cell(v, k) for v, k in zip(row, kinds, strict=True)]
            writer.writerow([*cells, label])
        return out.getvalue().encode()

    def _label_cells(self) -> list[str]:
        if self.task == "multiclass":
            return [self.classes[int(v)] for v in self.y.tolist()]
        if self.task == "regression":
            return [repr(float(v)) for v in self.y.tolist()]
        return [str(int(v)) for v in self.y.tolist()]

    def sha256(self) -> str:
        return hashlib.sha256(self.to_csv_bytes()).hexdigest()

    def take(self, index: np.ndarray) -> Dataset:
        return dataclasses.replace(self, X=self.X[index], y=self.y[index])

    def tail(self, n: int) -> Dataset:
        return self.take(np.arange(max(0, self.rows - n), self.rows))

    def select(self, names: tuple[str, ...] | list[str]) -> Dataset:
        """The same rows with the columns ``names`` in that order (DatasetError if absent)."""
        missing = [n for n in names if n not in self.feature_names]
        if missing:
            raise DatasetError(f"the dataset has no features {missing}")
        at = [self.feature_names.index(n) for n in names]
        kinds = tuple(self.feature_kinds[i] for i in at)
        X = self.X[:, at]
        if all(k == NUMBER for k in kinds) and X.dtype == object:
            X = X.astype(np.float64)
        nullable = tuple(self.nullable[i] for i in at) if self.nullable else ()
        return Dataset(tuple(names), X, self.y, self.task, self.classes,
                       kinds if self.kinds else (), nullable)  # fmt: skip

    def signature(self) -> dict[str, Any]:
        """The dataset's signature in the shape of ``contracts.Signature``: each feature's kind,
        whether it has missing values and (categories) the categories seen; the task and the
        classes."""
        features = []
        for j, (name, kind) in enumerate(zip(self.feature_names, self.feature_kinds, strict=True)):
            col = self.X[:, j].tolist()
            spec: dict[str, Any] = {
                "name": name,
                "kind": kind,
                "nullable": any(_missing(v) for v in col)
                or bool(self.nullable and self.nullable[j]),
                "categories": sorted({v for v in col if isinstance(v, str) and v})
                if kind == CATEGORY
                else [],
            }
            features.append(spec)
        return {"features": features, "task": self.task, "classes": list(self.classes)}


def name_problem(name: str) -> str | None:
    """What is wrong with a feature name (or a params key), or None: it must be 1 to
    ``MAX_NAME_LENGTH`` characters without a control character."""
    if not name:
        return "is empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"is longer than {MAX_NAME_LENGTH} characters"
    if CONTROL_CHARACTERS.search(name):
        return "holds a control character (NUL, tab, newline, ...)"
    return None


def check_names(names: tuple[str, ...]) -> None:
    """DatasetError naming the first bad column name, before a row is read."""
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise DatasetError(f"column {i} has a name that is not a string: {name!r}")
        problem = name_problem(name)
        if problem:
            raise DatasetError(f"column {i}'s name {problem}: {name!r}")


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v) or v == ""


def _cell(v: Any, kind: str) -> str:
    if _missing(v):
        return ""
    return str(v) if kind == CATEGORY else repr(float(v))


def _number(v: Any, where: str) -> float:
    if v is None or v == "":
        return math.nan
    if isinstance(v, bool):
        raise DatasetError(f"{where}: {v!r} is not a number")
    try:
        x = float(v)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{where}: {v!r} is not a number") from exc
    if not math.isfinite(x):
        raise DatasetError(f"{where}: NaN or infinite feature value")
    return x


def _category(v: Any, where: str) -> str | None:
    if v is None or v == "":
        return None
    if isinstance(v, bool) or not isinstance(v, str | int):
        raise DatasetError(f"{where}: {v!r} is not a category (a string)")
    text = str(v)
    if len(text) > MAX_CATEGORY_LENGTH:
        raise DatasetError(f"{where}: a category longer than {MAX_CATEGORY_LENGTH} characters")
    return text


def _is_number(v: Any) -> bool:
    if v is None or v == "":
        return True  # missing fits any kind
    if isinstance(v, bool):
        return False
    if isinstance(v, int | float):
        return True
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def infer_kinds(columns: list[list[Any]]) -> tuple[str, ...]:
    """A column is a number if every present value reads as one, else a category."""
    return tuple(NUMBER if all(_is_number(v) for v in col) else CATEGORY for col in columns)


def _as_label(v: Any) -> int | float | str:
    """A label as read from CSV text or JSON: an int, a float or a string."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int | float):
        if isinstance(v, float) and not math.isfinite(v):
            raise DatasetError("a label is NaN or infinite")
        return v
    text = str(v).strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        x = float(text)
    except ValueError:
        if not text:
            raise DatasetError("a label is empty") from None
        return text
    if not math.isfinite(x):
        raise DatasetError("a label is NaN or infinite")
    return x


def infer_task(labels: list[int | float | str]) -> str:
    """``binary`` when every label is 0 or 1; ``multiclass`` when labels are strings, or
    integers with at most ``MAX_INFERRED_CLASSES`` distinct values; else ``regression``. A
    run's ``params.task`` overrides the guess."""
    distinct = set(labels)
    if all(isinstance(v, str) for v in distinct):
        return "multiclass"
    if any(isinstance(v, str) for v in distinct):
        raise DatasetError("labels mix numbers and strings")
    if distinct <= {0, 1}:
        return "binary"
    if all(float(v).is_integer() for v in distinct) and len(distinct) <= MAX_INFERRED_CLASSES:
        return "multiclass"
    return "regression"


def _class_order(labels: set[str], raw: list[Any]) -> tuple[str, ...]:
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw)
    if numeric:
        return tuple(sorted(labels, key=float))
    return tuple(sorted(labels))


def encode_labels(
    labels: list[Any], task: str | None = None, classes: tuple[str, ...] = ()
) -> tuple[np.ndarray, str, tuple[str, ...]]:
    """Labels -> (y, task, classes). ``classes`` fixes the class order (a hold-out judged by a
    model trained on them); a label outside it is an error."""
    values = [_as_label(v) for v in labels]
    task = task or infer_task(values)
    if task not in TASKS:
        raise DatasetError(f"task must be one of {list(TASKS)}, got {task!r}")
    if task == "regression":
        if any(isinstance(v, str) for v in values):
            raise DatasetError("a regression needs numeric labels")
        return np.asarray(values, dtype=np.float64), task, ()
    if task == "binary":
        bad = [v for v in values if v not in (0, 1) or isinstance(v, str)]
        if bad:
            raise DatasetError(f"a binary label must be 0 or 1, got {bad[0]!r}")
        return np.asarray(values, dtype=np.int8), task, ()
    names = [_class_name(v) for v in values]
    order = classes or _class_order(set(names), values)
    if len(order) > MAX_CLASSES:
        raise DatasetError(f"{len(order)} classes, at most {MAX_CLASSES}")
    index = {c: i for i, c in enumerate(order)}
    unknown = sorted(set(names) - set(index))
    if unknown:
        raise DatasetError(f"labels {unknown[:5]} are not classes of the model {list(order)}")
    return np.asarray([index[n] for n in names], dtype=np.int64), task, tuple(order)


def _class_name(v: int | float | str) -> str:
    """A class as a string: 2 and 2.0 are the class "2"."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def from_rows(
    feature_names: list[str] | tuple[str, ...],
    rows: list[dict],
    labels: list[Any],
    *,
    task: str | None = None,
    kinds: tuple[str, ...] | None = None,
    classes: tuple[str, ...] = (),
) -> Dataset:
    """Rows of ``{feature: number | category | None}`` and their labels as a ``Dataset``;
    kinds and task inferred unless given."""
    names = tuple(feature_names)
    check_names(names)
    if len(set(names)) != len(names):
        raise DatasetError("dataset has duplicate column names")
    columns = [[r.get(n) for r in rows] for n in names]
    kinds = tuple(kinds) if kinds else infer_kinds(columns)
    y, task, classes = encode_labels(labels, task, classes)
    return Dataset(
        names, _matrix(columns, kinds, len(rows)), y, task, classes, _kinds_or_empty(kinds)
    )


def matrix_of(
    feature_names: tuple[str, ...], rows: list[dict], kinds: tuple[str, ...] | None = None
) -> np.ndarray:
    """Unlabelled rows as a model's input matrix (float, or object with categories)."""
    columns = [[r.get(n) for r in rows] for n in feature_names]
    return _matrix(columns, tuple(kinds) if kinds else infer_kinds(columns), len(rows))


def _kinds_or_empty(kinds: tuple[str, ...]) -> tuple[str, ...]:
    return () if all(k == NUMBER for k in kinds) else kinds


def _matrix(columns: list[list[Any]], kinds: tuple[str, ...], rows: int) -> np.ndarray:
    if all(k == NUMBER for k in kinds):
        X = np.empty((rows, len(columns)), dtype=np.float64)
        for j, col in enumerate(columns):
            X[:, j] = [_number(v, f"column {j}") for v in col]
        return X
    X = np.empty((rows, len(columns)), dtype=object)
    for j, (col, kind) in enumerate(zip(columns, kinds, strict=True)):
        convert = _number if kind == NUMBER else _category
        X[:, j] = [convert(v, f"column {j}") for v in col]
    return X


def from_csv_bytes(
    data: bytes, *, task: str | None = None, kinds: dict[str, str] | None = None
) -> Dataset:
    """Parse a labelled CSV: a ``label`` column (0/1, classes or values) and feature columns;
    a column is a number if every non-empty cell reads as one, else a category; an empty cell
    is a missing value. ``task`` and ``kinds`` (by column) override the guesses."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError("dataset is not UTF-8 text") from exc
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration as exc:
        raise DatasetError("dataset is empty") from exc
    except csv.Error as exc:
        raise DatasetError(f"unreadable CSV: {exc}") from exc
    if LABEL not in header:
        raise DatasetError(f"dataset has no {LABEL!r} column")
    check_names(tuple(header))
    label_at = header.index(LABEL)
    names = tuple(h for i, h in enumerate(header) if i != label_at)
    if not names:
        raise DatasetError("dataset has no feature columns")
    if len(set(header)) != len(header):
        raise DatasetError("dataset has duplicate column names")
    columns: list[list[str]] = [[] for _ in names]
    labels: list[str] = []
    try:
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise DatasetError(f"line {line_no}: {len(row)} fields, header has {len(header)}")
            cells = [v for i, v in enumerate(row) if i != label_at]
            for col, v in zip(columns, cells, strict=True):
                col.append(v)
            if not row[label_at].strip():
                raise DatasetError(f"line {line_no}: empty label")
            labels.append(row[label_at])
    except csv.Error as exc:
        raise DatasetError(f"unreadable CSV: {exc}") from exc
    guessed = infer_kinds(columns)
    given = kinds or {}
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise DatasetError(f"kinds name columns the dataset does not have: {unknown}")
    kinds_t = tuple(given.get(n, k) for n, k in zip(names, guessed, strict=True))
    y, task, classes = encode_labels(labels, task)
    X = _matrix(columns, kinds_t, len(labels))
    return Dataset(names, X, y, task, classes, _kinds_or_empty(kinds_t))


def split_holdout(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Deterministic shuffle split: the same dataset and seed give the same two parts."""
    if not 0 < fraction < 1:
        raise DatasetError("hold-out fraction must be in (0, 1)")
    order = np.random.default_rng(seed).permutation(ds.rows)
    n_holdout = max(1, round(ds.rows * fraction))
    return ds.take(np.sort(order[n_holdout:])), ds.take(np.sort(order[:n_holdout]))


QUANTILES = {
    "p01": 0.01,
    "p05": 0.05,
    "p25": 0.25,
    "p50": 0.5,
    "p75": 0.75,
    "p95": 0.95,
    "p99": 0.99,
}


def feature_stats(ds: Dataset) -> dict[str, dict]:
    """Per-feature reference statistics in the shape of ``contracts.FeatureStats``: numbers
    over their present values, categories as frequencies; both with their missing rate."""
    stats = {}
    for j, (name, kind) in enumerate(zip(ds.feature_names, ds.feature_kinds, strict=True)):
        raw = ds.X[:, j]
        if kind == CATEGORY:
            present = [v for v in raw.tolist() if not _missing(v)]
            counts: dict[str, int] = {}
            for v in present:
                counts[v] = counts.get(v, 0) + 1
            stats[name] = {
                "kind": CATEGORY,
                "frequencies": {k: counts[k] / len(present) for k in sorted(counts)},
                "count": len(present),
                "mean": 0.0,
                "std": 0.0,
                "min": 0.0,
                "max": 0.0,
                "quantiles": {},
                "missing_rate": 1 - len(present) / raw.size if raw.size else 0.0,
            }
            continue
        values = np.asarray(raw, dtype=np.float64)
        col = values[np.isfinite(values)]
        stats[name] = {
            "count": int(col.size),
            "mean": float(col.mean()) if col.size else 0.0,
            "std": float(col.std()) if col.size else 0.0,
            "min": float(col.min()) if col.size else 0.0,
            "max": float(col.max()) if col.size else 0.0,
            "quantiles": {k: float(np.quantile(col, q)) for k, q in QUANTILES.items()}
            if col.size
            else {},
            "missing_rate": 1 - col.size / values.size if values.size else 0.0,
        }
    return stats
