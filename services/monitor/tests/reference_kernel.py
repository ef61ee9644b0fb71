"""The signal kernel's oracle: what ``modelbus_monitor.kernel.SignalKernel`` computes, written one
point at a time in plain Python, with no batching and no optimisation.

A prediction: expire the join buffers; a re-delivery (its id waiting or recently joined) only
counts as a duplicate; a prediction that is not monitored (``policy.ineligibility``) is noted
with its reason; a monitored one, once the reference is known, has each feature (in name order)
standardised and fed to its mean stream and its magnitude to its variance stream (missing or
non-finite values to neither), goes into the daily windows and through the quality check; then
it joins its waiting label or waits itself. A label: expire, skip a re-delivery, join or wait.
A joined pair of a monitored prediction feeds its error (predicted label != label) to the error
stream. A full buffer drops its oldest entry; the joined-id memory keeps the last
``max_pending`` ids.

Shared with the kernel, because they are the specification rather than the optimisation: the
streams' per-value ``Stream.update`` (River's ``update`` per value, ``VarianceCusum.update``),
the per-row ``quality_issues``, the daily bins (``reference_bins``) and the eligibility rule.
"""

from __future__ import annotations

import math
import zlib
from bisect import bisect_right
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from modelbus_contracts import FeatureStats
from modelbus_monitor.config import DetectorConfig
from modelbus_monitor.daily import reference_bins
from modelbus_monitor.detectors import ERROR_STREAM, DriftAlarm, Stream
from modelbus_monitor.join import JoinedPair, LabelPoint, PredictionPoint
from modelbus_monitor.policy import ineligibility
from modelbus_monitor.quality import QualityIssue, bounds_for, quality_issues

HISTORY_EVERY = 50
SAMPLE_SIZE = 500


class ReferenceJoiner:
    def __init__(self, max_pending: int, max_wait_s: float) -> None:
        self.max_pending = max_pending
        self.max_wait = timedelta(seconds=max_wait_s)
        self.predictions: dict[str, PredictionPoint] = {}
        self.labels: dict[str, LabelPoint] = {}
        self.joined_ids: dict[str, None] = {}  # an ordered set, oldest first
        self.evicted: Counter[str] = Counter()
        self.duplicates = 0
        self.joined = 0

    def expire(self, now: datetime) -> None:
        for kind, buffer in (("prediction", self.predictions), ("label", self.labels)):
            for key, point in list(buffer.items()):
                if point.at < now - self.max_wait:
                    del buffer[key]
                    self.evicted[f"{kind}_expired"] += 1

    def add_prediction(self, point: PredictionPoint) -> tuple[bool, JoinedPair | None]:
        """(whether it is new, the pair it completed)."""
        pid = point.prediction_id
        if pid in self.joined_ids or pid in self.predictions:
            self.duplicates += 1
            return False, None
        label = self.labels.pop(pid, None)
        if label is None:
            self._wait(self.predictions, pid, point, "prediction")
            return True, None
        return True, self._join(point, label.label, point.event_id)

    def add_label(self, point: LabelPoint) -> JoinedPair | None:
        pid = point.prediction_id
        if pid in self.joined_ids or pid in self.labels:
            self.duplicates += 1
            return None
        prediction = self.predictions.pop(pid, None)
        if prediction is None:
            self._wait(self.labels, pid, point, "label")
            return None
        return self._join(prediction, point.label, point.event_id)

    def _wait(self, buffer: dict[str, Any], pid: str, point: Any, kind: str) -> None:
        buffer[pid] = point
        if len(buffer) > self.max_pending:
            del buffer[next(iter(buffer))]
            self.evicted[f"{kind}_overflow"] += 1

    def _join(self, prediction: PredictionPoint, label: int, tipping: str) -> JoinedPair:
        self.joined_ids[prediction.prediction_id] = None
        if len(self.joined_ids) > self.max_pending:
            del self.joined_ids[next(iter(self.joined_ids))]
        self.joined += 1
        return JoinedPair(prediction, label, tipping)


class ReferenceWindow:
    """One (day, feature) daily window, a value at a time (reservoir sampling, algorithm R)."""

    def __init__(self, model_name: str, day: str, feature: str, edges: list[float]) -> None:
        self.key = f"{model_name}|{day}|{feature}"
        self.edges = edges
        self.count = self.missing = 0
        self.total = self.total_sq = 0.0
        self.low: float | None = None
        self.high: float | None = None
        self.hist = [0] * (len(edges) + 1)
        self.sample: list[float] = []
        self.rng = np.random.default_rng(zlib.crc32(self.key.encode()))

    def add(self, value: float | None) -> None:
        if value is None or not math.isfinite(value):
            self.missing += 1
            return
        self.count += 1
        self.total += value
        self.total_sq += value * value
        self.low = value if self.low is None else min(self.low, value)
        self.high = value if self.high is None else max(self.high, value)
        self.hist[bisect_right(self.edges, value)] += 1
        if len(self.sample) < SAMPLE_SIZE:
            self.sample.append(value)
        else:
            slot = int(self.rng.random() * self.count)
            if slot < SAMPLE_SIZE:
                self.sample[slot] = value


class ReferenceKernel:
    """The kernel's signals, one point at a time. Signals are appended to the lists ``ignored``,
    ``joined``, ``alarms`` and ``issues`` as (position, ...) with the position the caller
    gives."""

    def __init__(self, model_name: str, config: DetectorConfig) -> None:
        self.model_name = model_name
        self.config = config
        self.joiner = ReferenceJoiner(config.join_max_pending, config.join_max_wait_s)
        self.counts: Counter[str] = Counter()
        self.history: list[tuple[float, float, int]] = []
        self.windows: dict[str, ReferenceWindow] = {}
        self.reference: dict[str, FeatureStats] = {}
        self.ignored: list[tuple[int, str]] = []
        self.joined: list[tuple[int, JoinedPair]] = []
        self.alarms: list[tuple[int, DriftAlarm, str]] = []
        self.issues: list[tuple[int, list[QualityIssue]]] = []
        self.checked = 0
        self.reset(None)

    def reset(self, version: int | None, *, forget_reference: bool = False) -> None:
        self.serving_version = version
        if forget_reference:
            self.reference = {}
        self.error = self.config.stream(self.model_name, ERROR_STREAM, "error")
        self.bucket_errors = 0
        self._make_feature_streams()

    def set_reference(self, reference: dict[str, FeatureStats]) -> None:
        self.reference = dict(reference)
        self._make_feature_streams()

    def _make_feature_streams(self) -> None:
        cfg, names = self.config, sorted(self.reference)
        self.features: dict[str, Stream] = {}
        self.scales: dict[str, Stream] = {}
        if cfg.feature_drift_enabled:
            self.features = {n: cfg.stream(self.model_name, n, "mean") for n in names}
            if cfg.scale_drift_enabled:
                self.scales = {n: cfg.stream(self.model_name, n, "scale") for n in names}

    # -- one prediction, one label ------------------------------------------------------------

    def prediction(
        self,
        at: int,
        now: datetime,
        prediction_id: str,
        version: int,
        served_by: str,
        label: int,
        features: dict[str, float],
        event_id: str,
    ) -> None:
        self.joiner.expire(now)
        point = PredictionPoint(prediction_id, version, served_by, label, event_id, now)
        new, pair = self.joiner.add_prediction(point)
        if not new:
            self.counts["duplicate_predictions"] += 1
            return
        self.counts["predictions"] += 1
        reason = ineligibility(version, served_by, self.serving_version)
        if reason is not None:
            self.ignored.append((at, reason))
            self.counts[f"ignored_{reason}"] += 1
        else:
            self.counts["monitored_predictions"] += 1
            if self.reference:
                self._inputs(at, now, features, event_id)
        if pair is not None:
            self._feed_pair(at, now, pair)

    def label(self, at: int, now: datetime, prediction_id: str, label: int, event_id: str) -> None:
        self.counts["labels"] += 1
        self.joiner.expire(now)
        pair = self.joiner.add_label(LabelPoint(prediction_id, label, event_id, now))
        if pair is not None:
            self._feed_pair(at, now, pair)

    def _inputs(self, at: int, now: datetime, features: dict[str, float], event_id: str) -> None:
        self.checked += 1
        day = now.date().isoformat()
        for name in sorted(self.reference):
            stats = self.reference[name]
            value = features.get(name)
            number = value if isinstance(value, int | float) else None
            self._window(day, name).add(number)
            if number is None or not self.features:
                continue
            z = (number - stats.mean) / (stats.std or 1.0)
            if not math.isfinite(z):
                continue
            if (alarm := self.features[name].update(z)) is not None:
                self.alarms.append((at, alarm, event_id))
            if name in self.scales and (alarm := self.scales[name].update(abs(z))) is not None:
                self.alarms.append((at, alarm, event_id))
        bounds = bounds_for(self.reference)
        if issues := quality_issues(features, bounds, self.config.outlier_z):
            self.issues.append((at, issues))

    def _window(self, day: str, feature: str) -> ReferenceWindow:
        key = f"{self.model_name}|{day}|{feature}"
        if key not in self.windows:
            edges, _ = reference_bins(self.reference[feature])
            self.windows[key] = ReferenceWindow(self.model_name, day, feature, edges)
        return self.windows[key]

    def _feed_pair(self, at: int, now: datetime, pair: JoinedPair) -> None:
        self.joined.append((at, pair))
        self.counts["joined"] += 1
        prediction = pair.prediction
        if ineligibility(prediction.version, prediction.served_by, self.serving_version):
            self.counts["pairs_ignored"] += 1
            return
        error = float(prediction.label != pair.label)
        self.counts["errors_fed"] += 1
        alarm = self.error.update(error)
        self.bucket_errors += int(error)
        if self.error.observations % HISTORY_EVERY == 0:
            rate = self.bucket_errors / HISTORY_EVERY
            self.history.append((now.timestamp(), rate, self.error.observations))
            self.bucket_errors = 0
        if alarm is not None:
            self.alarms.append((at, alarm, pair.tipping_event_id))
