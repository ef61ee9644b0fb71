"""What the error stream is made of, per task: a misclassification (0/1) for a classifier, a
residual exceedance (0/1) for a regression; and the regression's live RMSE and MAE.

Classification: a joined pair is an error when the predicted class is not the true one. Classes
are compared as the contracts compare them, as strings (``str(2) == "2"``, a float ``2.0`` is the
class ``"2"``), so an integer label and a string class agree.

Regression: the residual ``r = y - y_hat`` has a scale nobody knows in advance (prices, counts,
temperatures), so it cannot go to the error detector as it is: ADWIN assumes values in [0, 1] and
its ``delta`` would mean something else on every model. ``ResidualStream`` makes it a 0/1 stream
with a known meaning instead, a rank transform against a reference window:

- the first ``warmup`` (200) absolute residuals of the serving version fix ``threshold``, their
  empirical ``level`` (0.9) quantile. These points only set the threshold; they are not fed.
- every later residual feeds ``e = 1 if |r| > threshold else 0``.

While nothing changes the later residuals are exchangeable with the warm-up ones, so given the
threshold the ``e`` are independent Bernoulli(p) with the same ``p`` (about 0.1: the quantile of
200 points puts it within ~0.02 of 0.1, and that offset does not matter because every detector and
test compares the stream with its own first points). That is exactly the error stream a classifier
with a 10% error rate produces, on which the default detector (ADWIN, delta 0.002) and the
one-sided two-proportion confirmation test are calibrated (false alarms: none in 1M stationary
points in the drift bench). A regression that gets worse, whether its residuals widen (variance)
or move (bias), makes large residuals more frequent and raises ``p``; one that gets better lowers
it and, the test being one-sided, never alarms. The 0.9 level is chosen for power: for a bias of
one residual sd, p goes 0.10 -> 0.26 (z-statistic 0.54 sqrt(n)) where the median would give 0.50
-> 0.68 (0.35 sqrt(n)); for a doubling of the residual sd, 0.10 -> 0.41 (1.03 sqrt(n)) vs 0.50 ->
0.74 (0.47 sqrt(n)). Nothing about the residuals' scale or distribution is assumed.

The stream also keeps the squared residuals it fed (its first ``reference_size`` since reset and
its newest ``window_size``, aligned point for point with the error stream), so that the policy can
judge recovery on RMSE, the regression's own metric.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Literal

import numpy as np

Task = Literal["binary", "multiclass", "regression"]
TASKS: tuple[str, ...] = ("binary", "multiclass", "regression")
WARMUP = 200
LEVEL = 0.9


def class_of(value: Any) -> str:
    """A class as the contracts compare classes: as a string, a float with no fraction as the
    integer (``2.0`` is ``"2"``)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, bool):
        return str(int(value))
    return str(value)


def misclassified(predicted: Any, actual: Any) -> float:
    """1.0 when the predicted class is not the true one (equal values short-cut the strings)."""
    return 0.0 if predicted == actual or class_of(predicted) == class_of(actual) else 1.0


def residual(predicted: Any, actual: Any) -> float:
    """``actual - predicted`` for a regression; NaN when either is not a finite number (such a
    pair is not fed: a label of the wrong kind says nothing about the model)."""
    if isinstance(predicted, bool) or isinstance(actual, bool):
        return math.nan
    try:
        r = float(actual) - float(predicted)
    except (TypeError, ValueError):
        return math.nan
    return r if math.isfinite(r) else math.nan


RECOVERY_Z = 1.645  # one-sided 95%: the RMSE bound recovery is judged on


class ResidualStream:
    """A regression's residuals -> the 0/1 exceedance stream (see the module docstring), and the
    squared residuals behind it for RMSE."""

    def __init__(
        self,
        *,
        reference_size: int = 1000,
        window_size: int = 2000,
        warmup: int = WARMUP,
        level: float = LEVEL,
    ) -> None:
        self.warmup_size = warmup
        self.level = level
        self.reference_size = reference_size
        self.warmup: list[float] = []  # |r| until the threshold is fixed
        self.threshold: float | None = None
        self.reference: list[float] = []  # r² of the first fed points
        self.recent: deque[float] = deque(maxlen=window_size)  # r² of the newest fed points
        self.recent_abs: deque[float] = deque(maxlen=window_size)

    def exceedances(self, residuals: list[float]) -> tuple[int, list[float]]:
        """The residuals of a batch (finite) -> (how many leading ones went to the warm-up,
        the 0/1 exceedances of the rest, in order)."""
        taken = 0
        if self.threshold is None:
            taken = min(self.warmup_size - len(self.warmup), len(residuals))
            self.warmup.extend(abs(r) for r in residuals[:taken])
            if len(self.warmup) >= self.warmup_size:
                self.threshold = float(np.quantile(self.warmup, self.level, method="higher"))
            residuals = residuals[taken:]
            if self.threshold is None or not residuals:
                return taken, []
        threshold = self.threshold
        out = [1.0 if abs(r) > threshold else 0.0 for r in residuals]
        squares = [r * r for r in residuals]
        room = self.reference_size - len(self.reference)
        if room > 0:
            self.reference.extend(squares[:room])
        self.recent.extend(squares)
        self.recent_abs.extend(abs(r) for r in residuals)
        return taken, out

    def baseline_rmse(self, points: int) -> float | None:
        """RMSE of the first ``points`` fed residuals (the pre-drift level)."""
        chosen = self.reference[:points]
        return math.sqrt(sum(chosen) / len(chosen)) if chosen else None

    def rmse_upper(self, newest: int, z: float = RECOVERY_Z) -> float | None:
        """A one-sided upper confidence bound of the RMSE over the newest ``newest`` residuals:
        sqrt(MSE + z * SE(MSE)), SE from the squared residuals' own spread (heavy tails widen
        it). Recovery is declared on it, so that a few lucky points cannot close an incident
        whose model is still worse than before the drift."""
        if newest <= 1 or len(self.recent) < 2:
            return None
        squares = np.asarray(list(self.recent)[-newest:], dtype=np.float64)
        se = float(squares.std(ddof=1)) / math.sqrt(len(squares))
        return math.sqrt(float(squares.mean()) + z * se)

    def live(self, newest: int) -> tuple[float | None, float | None]:
        """(RMSE, MAE) of the newest ``newest`` fed residuals."""
        if newest <= 0 or not self.recent:
            return None, None
        squares = list(self.recent)[-newest:]
        absolute = list(self.recent_abs)[-newest:]
        return math.sqrt(sum(squares) / len(squares)), sum(absolute) / len(absolute)

    def snapshot(self) -> dict[str, Any]:
        return {
            "warmup": list(self.warmup),
            "threshold": self.threshold,
            "reference": list(self.reference),
            "recent": list(self.recent),
            "recent_abs": list(self.recent_abs),
        }

    def restore(self, snap: dict[str, Any]) -> None:
        self.warmup = list(snap.get("warmup", []))
        self.threshold = snap.get("threshold")
        self.reference = list(snap.get("reference", []))
        self.recent.extend(snap.get("recent", []))
        self.recent_abs.extend(snap.get("recent_abs", []))
