"""Labelled tabular datasets: canonical CSV bytes (so a snapshot's sha256 names its content),
deterministic hold-out splits and per-feature summary statistics (the monitor's reference)."""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass

import numpy as np

LABEL = "label"


class DatasetError(ValueError):
    pass


@dataclass(frozen=True)
class Dataset:
    feature_names: tuple[str, ...]
    X: np.ndarray  # shape (rows, features), float64
    y: np.ndarray  # shape (rows,), int8 in {0, 1}

    def __post_init__(self) -> None:
        if self.X.ndim != 2 or self.X.shape[1] != len(self.feature_names):
            raise DatasetError(
                f"X has shape {self.X.shape}, expected (n, {len(self.feature_names)})"
            )
        if self.y.shape != (self.X.shape[0],):
            raise DatasetError("y must have one label per row")

    @property
    def rows(self) -> int:
        return int(self.X.shape[0])

    def to_csv_bytes(self) -> bytes:
        """Canonical CSV: header, then rows with Python's round-trip float repr."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([*self.feature_names, LABEL])
        for row, label in zip(self.X.tolist(), self.y.tolist(), strict=True):
            writer.writerow([*(repr(float(v)) for v in row), int(label)])
        return out.getvalue().encode()

    def sha256(self) -> str:
        return hashlib.sha256(self.to_csv_bytes()).hexdigest()

    def take(self, index: np.ndarray) -> Dataset:
        return Dataset(self.feature_names, self.X[index], self.y[index])

    def tail(self, n: int) -> Dataset:
        return self.take(np.arange(max(0, self.rows - n), self.rows))


def from_rows(
    feature_names: list[str] | tuple[str, ...], rows: list[dict], labels: list[int]
) -> Dataset:
    names = tuple(feature_names)
    X = np.array([[float(r[name]) for name in names] for r in rows], dtype=np.float64).reshape(
        -1, len(names)
    )
    return Dataset(names, X, np.asarray(labels, dtype=np.int8))


def from_csv_bytes(data: bytes) -> Dataset:
    """Parse a labelled CSV (a ``label`` column of 0/1, every other column a numeric feature)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError("dataset is not UTF-8 text") from exc
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration as exc:
        raise DatasetError("dataset is empty") from exc
    if LABEL not in header:
        raise DatasetError(f"dataset has no {LABEL!r} column")
    label_at = header.index(LABEL)
    names = tuple(h for i, h in enumerate(header) if i != label_at)
    if not names:
        raise DatasetError("dataset has no feature columns")
    X_rows, y_rows = [], []
    for line_no, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise DatasetError(f"line {line_no}: {len(row)} fields, header has {len(header)}")
        try:
            values = [float(v) for i, v in enumerate(row) if i != label_at]
            label = int(row[label_at])
        except ValueError as exc:
            raise DatasetError(f"line {line_no}: {exc}") from exc
        if label not in (0, 1):
            raise DatasetError(f"line {line_no}: label must be 0 or 1, got {label}")
        if not all(np.isfinite(values)):
            raise DatasetError(f"line {line_no}: NaN or infinite feature value")
        X_rows.append(values)
        y_rows.append(label)
    X = np.asarray(X_rows, dtype=np.float64).reshape(-1, len(names))
    return Dataset(names, X, np.asarray(y_rows, dtype=np.int8))


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
    """Per-feature reference statistics in the shape of ``contracts.FeatureStats``."""
    stats = {}
    for j, name in enumerate(ds.feature_names):
        col = ds.X[:, j]
        stats[name] = {
            "count": int(col.size),
            "mean": float(col.mean()) if col.size else 0.0,
            "std": float(col.std()) if col.size else 0.0,
            "min": float(col.min()) if col.size else 0.0,
            "max": float(col.max()) if col.size else 0.0,
            "quantiles": {k: float(np.quantile(col, q)) for k, q in QUANTILES.items()}
            if col.size
            else {},
            "missing_rate": 0.0,
        }
    return stats
