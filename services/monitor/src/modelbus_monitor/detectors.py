"""Pure streaming drift detection: one ``Stream`` per monitored series (the model's error, each
standardised feature, each feature's |z| for variance changes).

A stream runs one streaming detector (River ADWIN by default; KSWIN, PageHinkley on inputs; DDM on
the error stream). A streaming alarm only opens a *pending* change: it becomes a ``DriftAlarm``
once a batch two-sample test between the stream's reference sample (its first points since reset)
and the points after the estimated change point rejects at ``alpha`` (sample splitting: the split
is the best mean split of the even-indexed recent points, only the odd-indexed points after it are
tested, so choosing the split does not bias the test): Kolmogorov-Smirnov plus Welch's t,
Bonferroni-combined, for continuous values; a one-sided two-proportion z-test for the 0/1 error
stream. The test is retried every ``confirm_every`` points while the change is pending and the
change is dismissed after ``confirm_patience`` points.
Streams keep their reference sample and a bounded window of recent values, which is what a
checkpoint stores: restoring replays the window into fresh detectors (JSON, no pickling).

Part of the signal kernel, so the batch paths are optimised, openly: ``Stream.update_many``
(ADWIN fed through ``any(map(...))`` up to the next change), ``VarianceCusum.first_change`` (a
batch of CUSUM steps as numpy cumulative sums) and ``update_columns`` (the variance CUSUMs of
many features in one 2-D pass). Each has a per-value reference, ``Stream.update`` and
``VarianceCusum.update``, and is tested to give the same alarms and state.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace
from itertools import islice
from operator import length_hint
from typing import Any, Literal

import numpy as np
from river import drift
from river.drift import binary
from scipy import stats as sps

ERROR_STREAM = "__error__"
Kind = Literal["mean", "scale", "error", "category"]
DETECTORS_INPUT = ("adwin", "kswin", "page_hinkley")
DETECTORS_ERROR = ("adwin", "ddm")


@dataclass(frozen=True)
class StreamConfig:
    """How one stream detects and confirms a change."""

    detector: str = "adwin"
    delta: float = 0.002
    min_observations: int = 300
    direction: Literal["up", "both"] = "both"
    reference_size: int = 1000
    window_size: int = 2000
    alpha: float = 0.001
    confirm_min: int = 16
    confirm_every: int = 10
    confirm_patience: int = 1000
    confirm_max: int = 1000
    seed: int = 7


@dataclass(frozen=True)
class DriftAlarm:
    """One confirmed change with the numbers behind it."""

    detector: str
    feature: str
    kind: Kind
    statistic: float
    threshold: float
    p_value: float
    reference_value: float
    current_value: float
    window_size: int
    observations: int
    test: str

    @classmethod
    def of(
        cls, result: TestResult, *, detector: str, feature: str, kind: Kind, observations: int
    ) -> DriftAlarm:
        """The alarm a confirming test's ``result`` raises."""
        return cls(
            detector=detector,
            feature=feature,
            kind=kind,
            statistic=result.statistic,
            threshold=result.threshold,
            p_value=result.p_value,
            reference_value=result.reference_value,
            current_value=result.current_value,
            window_size=result.n_current,
            observations=observations,
            test=result.test,
        )

    def evidence(self) -> dict[str, Any]:
        """The DriftDetected fields (``statistic`` > ``threshold`` is the rejection)."""
        return {
            "detector": self.detector,
            "feature": self.feature,
            "statistic": self.statistic,
            "reference_value": self.reference_value,
            "current_value": self.current_value,
            "threshold": self.threshold,
            "window_size": self.window_size,
            "observations": self.observations,
        }

    def details(self) -> dict[str, Any]:
        """Everything, for the incident record."""
        return self.evidence() | {"kind": self.kind, "p_value": self.p_value, "test": self.test}


@dataclass(frozen=True)
class TestResult:
    statistic: float
    threshold: float
    p_value: float
    reference_value: float
    current_value: float
    test: str
    n_current: int

    @property
    def rejects(self) -> bool:
        return self.statistic > self.threshold


def change_point(values: np.ndarray, margin: int) -> int:
    """Where the mean of ``values`` most likely changed: the split maximising the standardised
    difference of the means before and after it (one step of binary segmentation). Returns the
    number of points before the split; at least ``margin`` points stay on each side."""
    n = len(values)
    if n < 2 * margin:
        return max(0, n - margin)
    cumulative = np.cumsum(values)
    k = np.arange(margin, n - margin + 1)
    before = cumulative[k - 1] / k
    after = (cumulative[-1] - cumulative[k - 1]) / (n - k)
    stat = np.abs(after - before) * np.sqrt(k * (n - k) / n)
    return int(k[np.argmax(stat)])


def two_sample_test(reference: np.ndarray, current: np.ndarray, alpha: float) -> TestResult:
    """KS (any change of distribution) and Welch's t (more power on a pure shift of the mean),
    Bonferroni-combined: the one with the smaller p-value is reported, tested at alpha / 2."""
    ks = ks_test(reference, current, alpha / 2)
    welch = sps.ttest_ind(reference, current, equal_var=False)
    t_p = float(welch.pvalue) if math.isfinite(welch.pvalue) else 1.0
    if ks.p_value <= t_p:
        return replace(ks, p_value=min(1.0, 2 * ks.p_value))
    return TestResult(
        statistic=abs(float(welch.statistic)),
        threshold=float(sps.norm.isf(alpha / 4)),
        p_value=min(1.0, 2 * t_p),
        reference_value=ks.reference_value,
        current_value=ks.current_value,
        test="welch_t",
        n_current=ks.n_current,
    )


def ks_test(reference: np.ndarray, current: np.ndarray, alpha: float) -> TestResult:
    """Two-sample Kolmogorov-Smirnov; the threshold is D's asymptotic critical value at alpha."""
    result = sps.ks_2samp(reference, current, method="asymp")
    n, m = len(reference), len(current)
    critical = math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))
    return TestResult(
        statistic=float(result.statistic),
        threshold=critical,
        p_value=float(result.pvalue),
        reference_value=float(reference.mean()),
        current_value=float(current.mean()),
        test="ks",
        n_current=m,
    )


def proportion_test(reference: np.ndarray, current: np.ndarray, alpha: float) -> TestResult:
    """One-sided two-proportion z-test: did the share of 1s go up?"""
    p1, p2 = float(reference.mean()), float(current.mean())
    n1, n2 = len(reference), len(current)
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    se = math.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / n1 + 1 / n2))
    z = (p2 - p1) / se
    return TestResult(
        statistic=z,
        threshold=float(sps.norm.isf(alpha)),
        p_value=float(sps.norm.sf(z)),
        reference_value=p1,
        current_value=p2,
        test="two_proportion_z",
        n_current=n2,
    )


class VarianceCusum:
    """Two-sided CUSUM of the Gaussian log-likelihood ratio for a change of variance, fed the
    magnitudes |z| of a standardised series (River's detector interface: ``update``,
    ``drift_detected``).

    The series' own variance ``s0`` is learned over its first ``warmup`` points after each
    reset, so like ADWIN it flags a change *within* the stream, not a difference from the
    training data. With ``q = min(z², clip) / s0`` the increments are the log-likelihood ratios
    of a doubling and of a halving of the variance::

        up   = q / 4 - ln(2) / 2     mean -0.097 while nothing changes, +0.153 after a doubling
        down = ln(2) / 2 - q / 2     mean -0.153 while nothing changes, +0.097 after a halving

    ``S = max(0, S + increment)`` per side and a change is signalled when either exceeds
    ``threshold`` (Wald's bound: at least about ``exp(threshold)`` points between false
    alarms, 8.9M for 16 — measured here: 1 raw alarm in 10M stationary points, before the
    confirmation test; expected delay about ``threshold / 0.153`` ≈ 105 points on a
    doubling). The detector then re-learns the variance of the new regime. ``clip`` bounds one
    point's influence (heavy tails). ``first_change`` runs a whole batch in numpy:
    ``S_t = C_t - min(0, min_{s<=t} C_s)`` with ``C`` the running sum of the increments started
    at the previous ``S``."""

    LOG2_HALF = math.log(2.0) / 2

    def __init__(self, threshold: float = 16.0, warmup: int = 500, clip: float = 25.0) -> None:
        self.threshold = threshold
        self.warmup = warmup
        self.clip = clip
        self.drift_detected = False
        self._reset()

    def _reset(self) -> None:
        self.base_n = 0
        self.base_sum = 0.0
        self.s0 = 0.0
        self.up = 0.0
        self.down = 0.0
        self.tested = 0  # points tested since the variance was learned

    @property
    def estimation(self) -> float | None:
        """The variance of |z|'s series the detector currently compares against."""
        return self.s0 if self.base_n >= self.warmup else None

    def update(self, value: float) -> None:
        if self.drift_detected:
            self.drift_detected = False
            self._reset()
        q = min(value * value, self.clip)
        if self.base_n < self.warmup:
            self._learn(q, 1)
            return
        q /= self.s0
        self.up = max(0.0, self.up + (q * 0.25 - self.LOG2_HALF))
        self.down = max(0.0, self.down + (self.LOG2_HALF - q * 0.5))
        self.tested += 1
        if self.up > self.threshold or self.down > self.threshold:
            self.drift_detected = True

    def _learn(self, total: float, n: int) -> None:
        self.base_sum += total
        self.base_n += n
        if self.base_n >= self.warmup:
            self.s0 = max(self.base_sum / self.base_n, 1e-12)

    def first_change(self, values: list[float] | np.ndarray) -> int | None:
        """Feed ``values`` until a change: its index (the rest is not fed), or None. The same
        state and result as ``update`` per value."""
        if self.drift_detected:
            self.drift_detected = False
            self._reset()
        q = np.asarray(values, dtype=float)
        q = np.minimum(q * q, self.clip)
        start = 0
        if self.base_n < self.warmup:
            start = min(self.warmup - self.base_n, len(q))
            total = self.base_sum
            for value in q[:start].tolist():  # summed in order: the same s0 as ``update``
                total += value
            self._learn(total - self.base_sum, start)
            if start == len(q):
                return None
            q = q[start:]
        q /= self.s0
        up = _cusum(q * 0.25 - self.LOG2_HALF, self.up)
        down = _cusum(self.LOG2_HALF - q * 0.5, self.down)
        over = np.flatnonzero((up > self.threshold) | (down > self.threshold))
        hits = over[:1].tolist()
        at = hits[0] if hits else len(q) - 1
        self.up, self.down = float(up[at]), float(down[at])
        self.tested += at + 1
        if not hits:
            return None
        self.drift_detected = True
        return start + at

    @property
    def ready(self) -> bool:
        """Warmed up, with no change signalled on the last point."""
        return self.base_n >= self.warmup and not self.drift_detected

    @staticmethod
    def advance_quiet(detectors: list[VarianceCusum], block: np.ndarray) -> np.ndarray:
        """``block[:, j]`` into ``detectors[j]`` (all ``ready``, same settings) in one 2D pass,
        for the detectors that signal no change inside the block: their state advances exactly
        as ``first_change`` would advance it. Returns which ones those are; the others are left
        untouched (to be fed one by one)."""
        first = detectors[0]
        q = np.minimum(block * block, first.clip)
        q /= np.array([d.s0 for d in detectors])
        up = _cusum(q * 0.25 - first.LOG2_HALF, np.array([d.up for d in detectors]))
        down = _cusum(first.LOG2_HALF - q * 0.5, np.array([d.down for d in detectors]))
        quiet = (up.max(axis=0) <= first.threshold) & (down.max(axis=0) <= first.threshold)
        ups, downs = up[-1].tolist(), down[-1].tolist()
        for j in np.flatnonzero(quiet).tolist():
            detector = detectors[j]
            detector.up, detector.down = ups[j], downs[j]
            detector.tested += len(block)
        return quiet


def _cusum(increments: np.ndarray, start: float | np.ndarray) -> np.ndarray:
    """``S_t = max(0, S_{t-1} + increments_t)`` from ``S = start`` along axis 0: one series,
    or one per column."""
    running = np.cumsum(increments, axis=0)
    running += start
    lowest = np.minimum.accumulate(running, axis=0)
    np.minimum(lowest, 0.0, out=lowest)
    return running - lowest


class StreamingDetector:
    """A River detector behind one interface: ``update(x) -> change?`` and ``window()``, the
    number of recent points the detector attributes to the new regime."""

    def __init__(self, name: str, config: StreamConfig) -> None:
        self.name = name
        self.config = config
        self.river = _river_detector(name, config)
        self.since_reset = 0
        self.vectorised = name == "cusum"  # takes a numpy array in ``first_change``

    def update(self, value: float) -> int | None:
        """Feed one value; on a change, the length of the window attributed to the new regime."""
        self.river.update(value)
        self.since_reset += 1
        if not self.river.drift_detected:
            return None
        window = self.window()
        self.since_reset = 0
        return window

    def first_change(self, values: list[float] | np.ndarray) -> int | None:
        """Feed ``values`` until the detector signals a change: the index of that value (the
        rest is not fed), or None when all were fed without one. Same detector state and
        result as ``river.update`` per value (the reference; tested). Optimised for ADWIN: the
        values go straight to River's compiled ADWIN core through ``any(map(...))``, which
        stops right after the first change, so no Python frame runs per value; this relies on
        River's private ``_helper``, ``_reset`` and ``_drift_detected`` and falls back to
        ``update`` per value when they are not there."""
        river = self.river
        if self.name == "cusum":
            return river.first_change(values)
        helper = getattr(river, "_helper", None) if self.name == "adwin" else None
        if helper is None or not hasattr(river, "_drift_detected"):
            for j, value in enumerate(values):
                river.update(value)
                if river.drift_detected:
                    return j
            return None
        if river.drift_detected:  # what ``ADWIN.update`` does first after a change
            river._reset()
            helper = river._helper
        rest = iter(values)
        if not any(map(helper.update, rest)):  # stops right after the value that changed it
            return None
        river._drift_detected = True
        return len(values) - length_hint(rest) - 1

    def window(self) -> int:
        if self.name == "cusum":
            return max(self.config.confirm_min, min(self.river.tested, self.config.confirm_max))
        if self.name == "adwin":
            return int(self.river.width)
        if self.name == "kswin":
            return int(self.river.stat_size)
        return max(self.config.confirm_min, min(self.since_reset, 100))

    @property
    def estimation(self) -> float | None:
        value = getattr(self.river, "estimation", None)
        return float(value) if value is not None else None


def _river_detector(name: str, config: StreamConfig) -> Any:
    if name == "cusum":
        return VarianceCusum()
    if name == "adwin":
        return drift.ADWIN(delta=config.delta)
    if name == "kswin":
        return drift.KSWIN(seed=config.seed)
    if name == "page_hinkley":
        return drift.PageHinkley()
    if name == "ddm":
        return binary.DDM()
    raise ValueError(f"unknown detector {name!r}")


@dataclass
class Pending:
    detector: str
    start: int  # observation index where the new regime is estimated to begin
    raised_at: int
    last_test: int


class Stream:
    """One monitored series: a streaming detector, a reference sample and recent values."""

    def __init__(self, feature: str, kind: Kind, config: StreamConfig) -> None:
        self.feature = feature
        self.kind = kind
        self.config = config
        self.detector = StreamingDetector(config.detector, config)
        self.reference: list[float] = []
        self.recent: deque[float] = deque(maxlen=config.window_size)
        self.observations = 0
        self.pending: Pending | None = None
        self.changes = 0
        self.raised = 0
        self.confirmed = 0
        self.dismissed = 0
        self.last: DriftAlarm | None = None

    @property
    def name(self) -> str:
        return f"{self.feature}:{self.kind}" if self.kind == "scale" else self.feature

    def update(self, value: float) -> DriftAlarm | None:
        self.observations += 1
        self.recent.append(value)
        if len(self.reference) < self.config.reference_size:
            self.reference.append(value)
        return self._after(self.detector.update(value))

    def update_many(self, values: list[float] | np.ndarray) -> list[tuple[int, DriftAlarm]]:
        """Feed a batch; returns (index in ``values``, alarm) pairs. Same result and state as
        ``update`` per value (the reference; tested), but while nothing is pending the values
        go to the detector's ``first_change`` up to the next change and the buffers are
        extended in bulk. An array goes to a vectorised detector as it is; the buffers always
        hold Python floats."""
        array = values if isinstance(values, np.ndarray) and self.detector.vectorised else None
        if isinstance(values, np.ndarray):
            values = values.tolist()
        out: list[tuple[int, DriftAlarm]] = []
        i, n = 0, len(values)
        while i < n:
            if self.pending is not None:
                alarm = self.update(values[i])
                if alarm is not None:
                    out.append((i, alarm))
                i += 1
                continue
            feed = array if array is not None else values
            hit = self.detector.first_change(feed[i:] if i else feed)
            changed = hit is not None
            end = i + hit + 1 if hit is not None else n
            self._extend(values if i == 0 and end == n else values[i:end])
            self.detector.since_reset += end - i
            window = None
            if changed:
                window = self.detector.window()
                self.detector.since_reset = 0
            alarm = self._after(window)
            if alarm is not None:
                out.append((end - 1, alarm))
            i = end
        return out

    def absorb(self, chunk: list[float]) -> None:
        """Points its detector has already taken without a change (``update_columns``), with
        nothing pending: only the buffers and counters move."""
        self._extend(chunk)
        self.detector.since_reset += len(chunk)

    def _extend(self, chunk: list[float]) -> None:
        self.observations += len(chunk)
        self.recent.extend(chunk)
        room = self.config.reference_size - len(self.reference)
        if room > 0:
            self.reference.extend(chunk[:room])

    def _after(self, window: int | None) -> DriftAlarm | None:
        """Bookkeeping after one point: a change opens a pending alarm; pending ones are tested."""
        if window is not None:
            self.changes += 1
        if window is not None and self.observations >= self.config.min_observations:
            self.raised += 1
            if self.pending is None:
                start = self.observations - window
                self.pending = Pending(self.detector.name, start, self.observations, -(10**9))
        if self.pending is not None:
            return self._confirm()
        return None

    def _confirm(self) -> DriftAlarm | None:
        pending, cfg = self.pending, self.config
        assert pending is not None
        if self.observations - pending.last_test < cfg.confirm_every:
            return None
        pending.last_test = self.observations
        result = self._split_test()
        if result is not None and result.rejects:
            self.pending = None
            self.confirmed += 1
            self.last = self._alarm(pending.detector, result)
            return self.last
        if self.observations - pending.raised_at >= cfg.confirm_patience:
            self.pending = None
            self.dismissed += 1
        return None

    def _split_test(self) -> TestResult | None:
        """Sample splitting, so that picking the split does not bias the test: the change point
        is estimated on the even-indexed recent points and only the odd-indexed points after it
        are tested against the reference sample (before the split)."""
        cfg = self.config
        recent = np.fromiter(self.recent, float, len(self.recent))
        split = 2 * change_point(recent[0::2], cfg.confirm_min)
        current = recent[split + 1 :: 2][-cfg.confirm_max :]
        start = self.observations - len(recent) + split
        ref_end = min(len(self.reference), start)
        if len(current) < cfg.confirm_min or ref_end < cfg.confirm_min:
            return None
        reference = np.fromiter(self.reference[:ref_end], float, ref_end)
        if self.kind == "error":
            return proportion_test(reference, current, cfg.alpha)
        return two_sample_test(reference, current, cfg.alpha)

    def test(self, start: int | None = None) -> TestResult | None:
        """Reference sample (points before ``start``) vs the points since ``start`` (or the last
        ``confirm_max`` points); ``None`` when either side is too small."""
        cfg = self.config
        since = self.observations - (start if start is not None else 0)
        n_current = min(max(since, cfg.confirm_min), cfg.confirm_max, len(self.recent))
        ref_end = len(self.reference) if start is None else min(len(self.reference), start)
        if n_current < cfg.confirm_min or ref_end < cfg.confirm_min:
            return None
        reference = np.fromiter(self.reference[:ref_end], float, ref_end)
        tail = islice(self.recent, len(self.recent) - n_current, None)
        current = np.fromiter(tail, float, n_current)
        if self.kind == "error":
            return proportion_test(reference, current, cfg.alpha)
        return two_sample_test(reference, current, cfg.alpha)

    def recent_test(self) -> TestResult | None:
        """The reference sample vs the last ``confirm_max`` points after it: does the change
        persist?"""
        return self.test(max(len(self.reference), self.observations - self.config.confirm_max))

    def _alarm(self, detector: str, result: TestResult) -> DriftAlarm:
        return DriftAlarm.of(
            result,
            detector=f"{detector}-scale" if self.kind == "scale" else detector,
            feature=self.feature,
            kind=self.kind,
            observations=self.observations,
        )

    def mean(self) -> float | None:
        if not self.recent:
            return None
        return float(sum(self.recent) / len(self.recent))

    # -- checkpoint ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready state: the reference sample and recent window (rounded), and counters."""
        return {
            "feature": self.feature,
            "kind": self.kind,
            "detector": self.config.detector,
            "observations": self.observations,
            "reference": [round(v, 6) for v in self.reference],
            "recent": [round(v, 6) for v in self.recent],
            "raised": self.raised,
            "confirmed": self.confirmed,
            "dismissed": self.dismissed,
        }

    def restore(self, snap: dict[str, Any]) -> None:
        """Replay the stored window into fresh detectors (no alarm is raised by the replay)."""
        self.reference = [float(v) for v in snap.get("reference", [])][: self.config.reference_size]
        for value in snap.get("recent", []):
            self.detector.update(float(value))
            self.recent.append(float(value))
        self.observations = int(snap.get("observations", len(self.recent)))
        self.raised = int(snap.get("raised", 0))
        self.confirmed = int(snap.get("confirmed", 0))
        self.dismissed = int(snap.get("dismissed", 0))
        self.pending = None

    def state(self) -> dict[str, Any]:
        return {
            "detector": self.config.detector,
            "kind": self.kind,
            "observations": self.observations,
            "estimation": self.detector.estimation,
            "window": len(self.recent),
            "reference_size": len(self.reference),
            "changes": self.changes,
            "raised": self.raised,
            "confirmed": self.confirmed,
            "dismissed": self.dismissed,
            "pending": self.pending is not None,
            "min_observations": self.config.min_observations,
            "direction": self.config.direction,
        }


def update_columns(streams: list[Stream], columns: np.ndarray) -> list[tuple[int, int, DriftAlarm]]:
    """``columns[:, j]`` into ``streams[j]``: the (row, j, alarm) found, the same as
    ``update_many`` on each stream. Streams whose detector is a ready ``VarianceCusum`` with
    nothing pending and no change in this batch (the common case) advance together in one 2D
    pass; the others are fed one by one."""
    ready = [
        j
        for j, stream in enumerate(streams)
        if stream.pending is None and stream.detector.vectorised and stream.detector.river.ready
    ]
    done: set[int] = set()
    if ready and len(columns):
        detectors = [streams[j].detector.river for j in ready]
        quiet = VarianceCusum.advance_quiet(detectors, columns[:, ready])
        for j, calm in zip(ready, quiet.tolist(), strict=True):
            if calm:
                streams[j].absorb(columns[:, j].tolist())
                done.add(j)
    found: list[tuple[int, int, DriftAlarm]] = []
    for j, stream in enumerate(streams):
        if j not in done:
            found.extend((i, j, alarm) for i, alarm in stream.update_many(columns[:, j]))
    return found
