"""Pure data-quality checks of one prediction's features against the serving version's reference:
schema violations (unexpected features, a number feature that is not a number, a category feature
that is not a string), missing values (only where the reference had none: a feature that was
missing in training may be missing live), non-finite values, values outside the widened training
range ``[min - 3 std, max + 3 std]``, outliers (robust z-score against the reference median and
inter-quartile range above ``outlier_z``) and, for a category feature, a category the reference
never saw (``unseen_category``, the value is the example).

``quality_issues`` is the definition, one prediction at a time; the signal kernel runs it only on
the rows ``BatchScreen`` flags in a batch's feature matrix (a vectorised superset)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from typing import Any, Literal

import numpy as np

from modelbus_contracts import FeatureStats

Check = Literal["schema", "missing", "non_finite", "out_of_range", "outlier", "unseen_category"]
CHECKS: tuple[Check, ...] = Check.__args__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class QualityIssue:
    check: Check
    feature: str
    value: float | str | None
    low: float | None = None
    high: float | None = None
    detail: str = ""


@dataclass(frozen=True)
class Bounds:
    """Precomputed per-feature limits (computed once per reference, not per event)."""

    low: float
    high: float
    median: float
    robust_scale: float | None

    @classmethod
    def of(cls, stats: FeatureStats) -> Bounds:
        q = stats.quantiles
        scale = None
        if "p25" in q and "p75" in q and q["p75"] > q["p25"]:
            scale = (q["p75"] - q["p25"]) / 1.349
        elif stats.std > 0:
            scale = stats.std
        median = q.get("p50", stats.mean)
        return cls(stats.min - 3 * stats.std, stats.max + 3 * stats.std, median, scale)


def bounds_for(reference: dict[str, FeatureStats]) -> dict[str, Bounds]:
    return {name: Bounds.of(stats) for name, stats in reference.items()}


class BatchScreen:
    """Vectorised pre-check of a batch's feature matrix: the rows that may have an issue. Only
    those rows go through ``quality_issues`` for the details (the usual batch: none).

    It flags a superset of the rows ``quality_issues`` finds an issue in (a non-numeric value
    must already be NaN in the matrix, as ``feature_matrix`` makes it; an unexpected feature is
    the caller's to flag): the outlier limit is lowered by a relative 1e-9 because the screen
    compares ``|x - median| > scale * z`` where the per-row check computes ``|x - median| /
    scale > z``, and the two roundings may disagree right at the limit."""

    def __init__(self, names: list[str], bounds: dict[str, Bounds], outlier_z: float) -> None:
        self.names = names
        self.low = np.array([bounds[n].low for n in names])
        self.high = np.array([bounds[n].high for n in names])
        self.median = np.array([bounds[n].median for n in names])
        scale = [bounds[n].robust_scale or np.nan for n in names]
        self.limit = np.array(scale) * outlier_z * (1 - 1e-9)

    def flagged(self, matrix: np.ndarray) -> np.ndarray:
        """Row indices with a missing, non-finite, out-of-range or outlying value (a missing
        value may be expected: the per-row check decides)."""
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(matrix)
            bad |= (matrix < self.low) | (matrix > self.high)
            bad |= np.abs(matrix - self.median) > self.limit
        return np.flatnonzero(bad.any(axis=1))


def feature_matrix(rows: list[dict[str, Any]], names: list[str]) -> np.ndarray:
    """Rows x features as floats; missing or non-numeric values are NaN."""
    try:
        if not names:
            return np.empty((len(rows), 0))
        values = map(itemgetter(*names), rows)  # every row has every feature: no Python loop
        if len(names) > 1:
            values = chain.from_iterable(values)
        size = len(rows) * len(names)
        return np.fromiter(values, dtype=float, count=size).reshape(len(rows), len(names))
    except (KeyError, TypeError, ValueError):
        return np.array([[_number(row.get(n)) for n in names] for row in rows], dtype=float)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def quality_issues(
    features: dict[str, Any],
    bounds: dict[str, Bounds],
    outlier_z: float = 6.0,
    *,
    categories: dict[str, frozenset[str]] | None = None,
    optional: frozenset[str] = frozenset(),
) -> list[QualityIssue]:
    """Every issue of one feature vector (the definition ``BatchScreen`` is checked against):
    ``bounds`` of the number features, the reference ``categories`` of the category features,
    the ``optional`` features (missing in training too, so a null is no issue)."""
    issues: list[QualityIssue] = []
    categories = categories or {}
    for name, b in bounds.items():
        value = features.get(name)
        if value is None:
            if name not in optional:
                issues.append(QualityIssue("missing", name, None))
        elif isinstance(value, bool) or not isinstance(value, int | float):
            issues.append(QualityIssue("schema", name, None, detail=type(value).__name__))
        elif not math.isfinite(value):
            issues.append(QualityIssue("non_finite", name, None))
        elif not b.low <= value <= b.high:
            issues.append(QualityIssue("out_of_range", name, float(value), b.low, b.high))
        elif b.robust_scale and abs(value - b.median) / b.robust_scale > outlier_z:
            low = b.median - outlier_z * b.robust_scale
            high = b.median + outlier_z * b.robust_scale
            issues.append(QualityIssue("outlier", name, float(value), low, high))
    for name, known in categories.items():
        value = features.get(name)
        if value is None:
            if name not in optional:
                issues.append(QualityIssue("missing", name, None))
        elif not isinstance(value, str):
            issues.append(QualityIssue("schema", name, None, detail=type(value).__name__))
        elif value not in known:
            issues.append(QualityIssue("unseen_category", name, value[:200]))
    if len(features) > len(bounds) + len(categories):
        expected = bounds.keys() | categories.keys()
        for name in sorted(features.keys() - expected):
            issues.append(QualityIssue("schema", name, None, detail="unexpected feature"))
    return issues


@dataclass
class QualityTally:
    """Issue counts since the last alert, with up to ``max_examples`` examples."""

    counts: dict[str, int] = field(default_factory=dict)
    by_feature: dict[str, int] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)
    checked: int = 0
    max_examples: int = 5

    def add(self, prediction_id: str, issues: list[QualityIssue]) -> None:
        for issue in issues:
            self.counts[issue.check] = self.counts.get(issue.check, 0) + 1
            self.by_feature[issue.feature] = self.by_feature.get(issue.feature, 0) + 1
            if len(self.examples) < self.max_examples:
                example = {"prediction_id": prediction_id, "check": issue.check}
                example |= {"feature": issue.feature, "value": issue.value}
                example |= {"low": issue.low, "high": issue.high}
                if issue.detail:
                    example["detail"] = issue.detail
                self.examples.append(example)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def top(self, counts: dict[str, int]) -> str:
        return max(sorted(counts), key=lambda k: counts[k])
