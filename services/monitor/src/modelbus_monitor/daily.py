"""Pure daily windows per feature ("yesterday vs today"): counts, a histogram on the reference's
quantile bins and a bounded random sample per (model, day, feature), and the comparisons between
two days or a day and the reference: PSI (thresholds 0.1 warn / 0.25 drift, as in Evidently) and
a Kolmogorov-Smirnov test (two-sample between days; one-sample against the reference CDF
interpolated through its quantiles).

Part of the signal kernel: a window takes a batch's column at once (sums, bins and reservoir
slots for the whole column; a batch with no missing value sums all columns together). The
kernel's oracle keeps the same windows one value at a time; they agree exactly (the sums up to
the rounding of a different summation order)."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import numpy as np
from scipy import stats as sps

from modelbus_contracts import FeatureStats

LEVELS = {"p01": 0.01, "p05": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95, "p99": 0.99}
NORMAL_Z = {"p01": -2.326, "p05": -1.645, "p25": -0.674, "p50": 0.0, "p75": 0.674}
NORMAL_Z |= {"p95": 1.645, "p99": 2.326}
EPS = 1e-4


@dataclass(frozen=True)
class Thresholds:
    psi_warn: float = 0.1
    psi_drift: float = 0.25
    ks_alpha: float = 0.01


def reference_bins(stats: FeatureStats) -> tuple[list[float], list[float]]:
    """Bin edges at the reference quantiles (or mean + std * normal quantiles when it has none)
    and the share of the reference expected in each of the ``len(edges) + 1`` bins."""
    points = []
    for key, level in LEVELS.items():
        if key in stats.quantiles:
            points.append((float(stats.quantiles[key]), level))
        else:
            points.append((stats.mean + NORMAL_Z[key] * (stats.std or 1.0), level))
    edges, levels = [], []
    for value, level in sorted(points):
        if not edges or value > edges[-1]:
            edges.append(value)
            levels.append(level)
    shares = np.diff([0.0, *levels, 1.0]).tolist()
    return edges, shares


def day_of(now: datetime) -> str:
    return now.date().isoformat()


def previous_day(day: str) -> str:
    return date.fromordinal(date.fromisoformat(day).toordinal() - 1).isoformat()


@dataclass
class DailyFeature:
    """One feature's window for one day."""

    model_name: str
    day: str
    feature: str
    edges: list[float]
    reference_shares: list[float]
    levels: list[float]
    count: int = 0
    missing: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    low: float | None = None
    high: float | None = None
    hist: list[int] = field(default_factory=list)
    sample: list[float] = field(default_factory=list)
    sample_size: int = 500
    dirty: bool = True

    def __post_init__(self) -> None:
        if not self.hist:
            self.hist = [0] * (len(self.edges) + 1)
        key = f"{self.model_name}|{self.day}|{self.feature}".encode()
        self._rng = np.random.default_rng(zlib.crc32(key) + self.count)
        self._edges = np.asarray(self.edges, dtype=float)

    def add_many(self, values: np.ndarray) -> None:
        """Add a column of values (NaN or infinite = missing), vectorised; the sample is a
        reservoir sample of the day."""
        finite = values if np.isfinite(values).all() else values[np.isfinite(values)]
        self.missing += len(values) - len(finite)
        self.dirty = True
        if len(finite):
            total, total_sq = float(finite.sum()), float(np.dot(finite, finite))
            self.add_finite(finite, total, total_sq, float(finite.min()), float(finite.max()))

    def add_finite(
        self, finite: np.ndarray, total: float, total_sq: float, low: float, high: float
    ) -> None:
        """Add finite values whose sum, sum of squares, min and max are known (a whole batch's
        columns are summed at once)."""
        self.dirty = True
        seen = self.count
        self.count += len(finite)
        self.total += total
        self.total_sq += total_sq
        self.low = low if self.low is None else min(self.low, low)
        self.high = high if self.high is None else max(self.high, high)
        bins = np.bincount(self._edges.searchsorted(finite, side="right"), minlength=len(self.hist))
        self.hist = [a + b for a, b in zip(self.hist, bins.tolist(), strict=True)]
        fill = max(0, min(self.sample_size - len(self.sample), len(finite)))
        if fill:
            self.sample.extend(finite[:fill].tolist())
        rest = finite[fill:]
        if len(rest):
            # algorithm R: the i-th value of the day replaces a random slot with p = size / i
            seen_after = seen + fill + np.arange(1, len(rest) + 1)
            slots = (self._rng.random(len(rest)) * seen_after).astype(np.int64)
            hit = np.flatnonzero(slots < self.sample_size)
            for slot, value in zip(slots[hit].tolist(), rest[hit].tolist(), strict=True):
                self.sample[slot] = value

    def doc(self) -> dict[str, Any]:
        mean = self.total / self.count if self.count else None
        var = self.total_sq / self.count - mean * mean if mean is not None else None
        return {
            "_id": f"{self.model_name}|{self.day}|{self.feature}",
            "model_name": self.model_name,
            "day": self.day,
            "feature": self.feature,
            "count": self.count,
            "missing": self.missing,
            "total": self.total,
            "total_sq": self.total_sq,
            "mean": mean,
            "std": math.sqrt(max(var, 0.0)) if var is not None else None,
            "min": self.low,
            "max": self.high,
            "edges": self.edges,
            "reference_shares": self.reference_shares,
            "levels": self.levels,
            "hist": self.hist,
            "sample": [round(v, 6) for v in self.sample],
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> DailyFeature:
        out = cls(
            model_name=doc["model_name"],
            day=doc["day"],
            feature=doc["feature"],
            edges=list(doc["edges"]),
            reference_shares=list(doc["reference_shares"]),
            levels=list(doc.get("levels", [])),
            count=int(doc["count"]),
            missing=int(doc["missing"]),
            total=float(doc.get("total", 0.0)),
            total_sq=float(doc.get("total_sq", 0.0)),
            low=doc.get("min"),
            high=doc.get("max"),
            hist=[int(h) for h in doc["hist"]],
            sample=[float(v) for v in doc["sample"]],
        )
        out.dirty = False
        return out


class DailyBook:
    """A model's current-day windows; days roll over with the (injected) clock."""

    def __init__(self, model_name: str, reference: dict[str, FeatureStats]) -> None:
        self.model_name = model_name
        self.bins = {name: reference_bins(stats) for name, stats in reference.items()}
        self.levels = {
            name: [LEVELS[k] for k in LEVELS if k in stats.quantiles] or list(LEVELS.values())
            for name, stats in reference.items()
        }
        self.day: str | None = None
        self.features: dict[str, DailyFeature] = {}
        self.finished: list[DailyFeature] = []

    def add(self, names: list[str], matrix: np.ndarray, now: datetime) -> None:
        """One batch: ``matrix[:, j]`` holds feature ``names[j]`` (NaN = missing)."""
        day = day_of(now)
        if day != self.day:
            self._roll(day)
        windows = [self.features.get(name) for name in names]
        if len(matrix) and np.isfinite(matrix).all():  # the common case: column sums at once
            columns = np.ascontiguousarray(matrix.T)
            totals = columns.sum(axis=1).tolist()
            squares = np.einsum("ij,ij->i", columns, columns).tolist()
            lows, highs = columns.min(axis=1).tolist(), columns.max(axis=1).tolist()
            for j, window in enumerate(windows):
                if window is not None:
                    window.add_finite(columns[j], totals[j], squares[j], lows[j], highs[j])
            return
        for j, window in enumerate(windows):
            if window is not None:
                window.add_many(matrix[:, j])

    def _roll(self, day: str) -> None:
        self.finished.extend(w for w in self.features.values() if w.dirty)
        self.day = day
        self.features = {
            name: DailyFeature(self.model_name, day, name, edges, shares, self.levels[name])
            for name, (edges, shares) in self.bins.items()
        }

    def resume(self, day: str, windows: list[DailyFeature]) -> None:
        """Continue ``day``'s windows after a restart (loaded from the store)."""
        if day != self.day:
            self._roll(day)
            self.finished = []
        for window in windows:
            if window.day == self.day and window.feature in self.features:
                self.features[window.feature] = window

    def drain(self) -> list[DailyFeature]:
        """Windows changed since the last drain (finished days first), for the store."""
        out = self.finished + [w for w in self.features.values() if w.dirty]
        self.finished = []
        return out


def psi(actual: list[int] | np.ndarray, expected_shares: list[float] | np.ndarray) -> float | None:
    counts = np.asarray(actual, float)
    if counts.sum() <= 0:
        return None
    a = np.clip(counts / counts.sum(), EPS, None)
    e = np.clip(np.asarray(expected_shares, float), EPS, None)
    return float(np.sum((a - e) * np.log(a / e)))


def shares(hist: list[int]) -> list[float] | None:
    total = sum(hist)
    return [h / total for h in hist] if total else None


def status(value: float | None, t: Thresholds) -> str:
    if value is None:
        return "no_data"
    return "drift" if value >= t.psi_drift else "warn" if value >= t.psi_warn else "ok"


def ks_days(a: list[float], b: list[float]) -> dict[str, float] | None:
    if len(a) < 10 or len(b) < 10:
        return None
    result = sps.ks_2samp(a, b, method="asymp")
    return {"statistic": float(result.statistic), "p_value": float(result.pvalue)}


def ks_reference(sample: list[float], edges: list[float], levels: list[float]) -> dict | None:
    """One-sample KS against the reference CDF interpolated through its quantiles."""
    if len(sample) < 10 or len(edges) != len(levels) or len(edges) < 2:
        return None

    def cdf(x: np.ndarray) -> np.ndarray:
        return np.interp(x, edges, levels, left=0.0, right=1.0)

    result = sps.kstest(sample, cdf)
    return {"statistic": float(result.statistic), "p_value": float(result.pvalue)}


def compare(today: DailyFeature, previous: DailyFeature | None, t: Thresholds) -> dict[str, Any]:
    """One feature's day: its numbers, PSI and KS vs the previous day and vs the reference."""
    doc = today.doc()
    psi_ref = psi(today.hist, today.reference_shares)
    psi_prev = ks_prev = None
    if previous is not None and previous.count and len(previous.hist) == len(today.hist):
        prev_shares = shares(previous.hist)
        psi_prev = psi(today.hist, prev_shares) if prev_shares else None
        ks_prev = ks_days(previous.sample, today.sample)
    ks_ref = ks_reference(today.sample, today.edges, today.levels)
    worst = max((v for v in (psi_prev, psi_ref) if v is not None), default=None)
    return {
        "count": doc["count"],
        "missing": doc["missing"],
        "mean": doc["mean"],
        "std": doc["std"],
        "min": doc["min"],
        "max": doc["max"],
        "edges": doc["edges"],
        "hist": doc["hist"],
        "previous_count": previous.count if previous else 0,
        "psi_vs_previous": psi_prev,
        "ks_vs_previous": ks_prev,
        "psi_vs_reference": psi_ref,
        "ks_vs_reference": ks_ref,
        "status_vs_previous": status(psi_prev, t),
        "status_vs_reference": status(psi_ref, t),
        "status": status(worst, t),
        "ks_rejects_vs_previous": bool(ks_prev and ks_prev["p_value"] < t.ks_alpha),
    }
