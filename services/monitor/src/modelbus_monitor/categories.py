"""Drift of a category feature: a chi-square test of homogeneity between the training reference's
category counts and each window of live values.

Why this test, and these defaults (nothing here is fitted to a stream):

- **Against the reference, with its sampling error.** The reference gives each category's share
  among the ``count`` training rows (non-missing). Testing the window against those shares as if
  they were exact (goodness of fit) would reject more and more often as the window grows whenever
  the training set was small; the 2 x K table (reference counts ``share * rows`` vs the window's
  counts) tests whether both are samples of one distribution, and becomes the goodness-of-fit
  test when the training set is large.
- **Tumbling windows of ``window`` (1000) non-missing values, each tested once at ``alpha``**
  (0.001, the monitor's confirmation level). Windows do not overlap, so under no drift the tests
  are independent and the false-alarm rate is exactly ``alpha`` per window: one per million
  values of the feature. A bounded window also fixes the smallest change worth an incident:
  with Cohen's effect size ``w = sqrt(sum (p1 - p0)² / p0)``, 1000 values detect ``w = 0.2`` (a
  "small to medium" effect, e.g. shares 0.5/0.3/0.2 -> 0.4/0.3/0.3 is w = 0.25) with power
  0.96-0.999 for 2 to 10 categories, and ``w = 0.1`` (0.5/0.5 -> 0.55/0.45) only about half the
  time: a tiny, harmless skew between training and serving does not open incidents however long
  the stream runs (a test on all the data since the start would, eventually).
- **Cochran's rule.** Categories expected fewer than 5 times in a window are pooled into one
  cell (chi-square's approximation needs expected counts of about 5); with fewer than two cells
  left there is nothing to test.
- **Unseen categories are not this test's business.** A value absent from the reference is a
  data-quality issue (``unseen_category``, with examples); it is left out of the window, so one
  new code does not also count as a drift of the known ones. Missing values are left out too
  (the quality checks count them).

The alarm reports the chi-square statistic against its critical value (``statistic`` >
``threshold``), its p-value, and, as ``reference_value`` / ``current_value``, the reference and
window shares of the category that moved most.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from scipy import stats as sps

from modelbus_contracts import FeatureStats

from .detectors import DriftAlarm, TestResult

WINDOW = 1000
MIN_EXPECTED = 5.0
OTHER = "\x00other"  # the pooled rare categories


class CategoryStream:
    """One category feature's tumbling windows and their chi-square tests."""

    kind = "category"

    def __init__(
        self, feature: str, stats: FeatureStats, *, window: int = WINDOW, alpha: float = 0.001
    ) -> None:
        self.feature = feature
        self.window = window
        self.alpha = alpha
        self.shares = {str(k): float(v) for k, v in stats.frequencies.items() if v > 0}
        total = sum(self.shares.values()) or 1.0
        self.shares = {k: v / total for k, v in self.shares.items()}
        # the reference's size: its non-missing training rows (0: treat the shares as exact)
        self.reference_rows = stats.count * (1.0 - stats.missing_rate)
        self.categories = frozenset(self.shares)
        self.counts: Counter[str] = Counter()
        self.filled = 0
        self.observations = 0
        self.tests = 0
        self.confirmed = 0
        self.last_test: TestResult | None = None
        self.last_counts: dict[str, int] = {}

    @property
    def name(self) -> str:
        return self.feature

    def update_many(self, values: list[str]) -> list[tuple[int, DriftAlarm]]:
        """Known categories of a batch, in order: the windows they complete are tested; returns
        (index in ``values`` of the value that completed the window, alarm) pairs."""
        out: list[tuple[int, DriftAlarm]] = []
        i, n = 0, len(values)
        while i < n:
            take = min(self.window - self.filled, n - i)
            self.counts.update(values[i : i + take] if take < n else values)
            self.filled += take
            self.observations += take
            i += take
            if self.filled >= self.window:
                result = self.test(self.counts)
                self.last_counts = dict(self.counts)
                self.counts, self.filled = Counter(), 0
                if result is not None:
                    self.tests += 1
                    self.last_test = result
                    if result.rejects:
                        self.confirmed += 1
                        out.append((i - 1, self.alarm(result)))
        return out

    def test(self, counts: Counter[str] | dict[str, int]) -> TestResult | None:
        """Chi-square test of homogeneity: reference counts vs ``counts`` (Cochran-pooled)."""
        n = sum(counts.values())
        if n == 0:
            return None
        cells, pooled = [], [0.0, 0.0]
        for category, share in self.shares.items():
            pair = (share, float(counts.get(category, 0)))
            if share * n < MIN_EXPECTED:
                pooled[0] += pair[0]
                pooled[1] += pair[1]
            else:
                cells.append(pair)
        if pooled[0] > 0:
            cells.append((pooled[0], pooled[1]))
        if len(cells) < 2:
            return None
        shares = np.array([c[0] for c in cells])
        observed = np.array([c[1] for c in cells])
        statistic = _homogeneity(shares, observed, self.reference_rows)
        df = len(cells) - 1
        moved = max(self.shares, key=lambda c: abs(counts.get(c, 0) / n - self.shares[c]))
        return TestResult(
            statistic=statistic,
            threshold=float(sps.chi2.isf(self.alpha, df)),
            p_value=float(sps.chi2.sf(statistic, df)),
            reference_value=self.shares[moved],
            current_value=counts.get(moved, 0) / n,
            test="chi_square",
            n_current=int(n),
        )

    def recent_test(self) -> TestResult | None:
        """The last complete window's test, or the window being filled when it has enough
        values: does the change persist?"""
        if self.filled >= max(1, self.window // 2):
            return self.test(self.counts)
        return self.last_test

    def alarm(self, result: TestResult) -> DriftAlarm:
        return DriftAlarm.of(
            result,
            detector="chi_square",
            feature=self.feature,
            kind="category",
            observations=self.observations,
        )

    def shares_now(self) -> dict[str, float]:
        """The shares of the last complete window (or of the one being filled)."""
        counts = self.last_counts or dict(self.counts)
        n = sum(counts.values())
        return {k: v / n for k, v in sorted(counts.items())} if n else {}

    def state(self) -> dict[str, Any]:
        last = self.last_test
        return {
            "kind": "category",
            "detector": "chi_square",
            "observations": self.observations,
            "window": self.window,
            "filled": self.filled,
            "tests": self.tests,
            "raised": self.confirmed,
            "confirmed": self.confirmed,
            "dismissed": 0,
            "pending": False,
            "estimation": None if last is None else last.statistic,
            "last_test": None
            if last is None
            else {
                "statistic": last.statistic,
                "threshold": last.threshold,
                "p_value": last.p_value,
                "n": last.n_current,
            },
            "reference_shares": dict(sorted(self.shares.items())),
            "shares": self.shares_now(),
        }

    def snapshot(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "kind": "category",
            "counts": dict(self.counts),
            "filled": self.filled,
            "observations": self.observations,
        }

    def restore(self, snap: dict[str, Any]) -> None:
        self.counts = Counter({str(k): int(v) for k, v in snap.get("counts", {}).items()})
        self.filled = int(snap.get("filled", sum(self.counts.values())))
        self.observations = int(snap.get("observations", self.filled))


def _homogeneity(shares: np.ndarray, observed: np.ndarray, reference_rows: float) -> float:
    """Pearson's chi-square of the 2 x K table (reference counts ``shares * reference_rows``,
    ``observed``); with no reference size, goodness of fit against ``shares``."""
    n = observed.sum()
    if reference_rows <= 0:
        expected = shares * n
        return float(((observed - expected) ** 2 / expected).sum())
    reference = shares * reference_rows
    table = np.vstack([reference, observed])
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        cells = np.where(expected > 0, (table - expected) ** 2 / expected, 0.0)
    return float(cells.sum())
