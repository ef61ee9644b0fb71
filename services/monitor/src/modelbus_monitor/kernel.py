"""The monitor's signal kernel for one model: the join, the drift streams, the data-quality
screen and the daily windows, fed a batch at a time.

Two entry points, both columns in, signals out: ``predictions`` (a batch of PredictionMade as
column lists) and ``labels`` (a batch of LabelObserved). The returned ``Signals`` say which
predictions were new, which were not monitored and why, which pairs were joined, which drift
alarms were confirmed (with the event that caused each), which predictions have quality issues
and how many were checked. What the signals lead to (incidents, alerts) is ``policy.py``'s
business; which predictions are monitored is its ``ineligibility`` rule, applied here.

This code is optimised on purpose: it is the monitor's hot path, run for every prediction and
label. Its specification is the per-point reference implementation in
``tests/reference_kernel.py`` (one point at a time, plain Python), and randomised differential
tests check that any batching of a stream gives the oracle's signals, in the oracle's order, and
the same join buffers, detector state, daily windows and counts. The optimisations, each chosen
because it removes per-point interpreter work (the figures are in ``benchmarks/monitor_bench.py``
and the monitor's README):

- Set tests before loops: a batch whose predictions are all of the serving version and served
  by a monitored server is recognised with two set comparisons, not a check per point; likewise
  pairs fed to the error stream. Batches that fail the test take the per-point rule.
- One feature matrix per batch (rows x reference features, NaN where a value is missing) built
  by ``map``/``itemgetter`` over the feature dicts; standardisation, the quality screen and the
  daily windows all work on it column-wise.
- Detectors fed whole columns: ``Stream.update_many`` runs ADWIN over a column without a Python
  call per value and stops at the first change; the variance CUSUMs of all quiet features
  advance in one 2-D numpy pass (``update_columns``). Alarms are then sorted into the order the
  per-point path raises them (point, feature, mean before scale, features before the error), so
  which alarm opens an incident does not depend on the batching.
- A quality screen (``BatchScreen``) finds, vectorised, a superset of the rows with an issue;
  only those get the detailed per-row check.
- Number and category features apart: the matrix, the streams, the screen and the daily windows
  take the number features only (a model with no category feature runs exactly the all-number
  path); a category feature's column is counted with ``Counter`` per batch (``categories.py``:
  chi-square on tumbling windows), and only a batch with an unseen or non-string value looks at
  its rows one by one.
- The error stream per task (``outcomes.py``): a misclassification for a classifier, a residual
  exceedance for a regression; the binary path compares values first and builds strings only for
  the pairs that differ.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime
from itertools import repeat
from operator import itemgetter
from typing import Any

import numpy as np

from modelbus_contracts import FeatureStats

from .categories import CategoryStream
from .config import DetectorConfig
from .daily import DailyBook
from .detectors import ERROR_STREAM, DriftAlarm, Stream, update_columns
from .join import JoinedPair, Joiner, PredictionPoint
from .outcomes import ResidualStream, Task, class_of, residual
from .policy import MONITORED_SERVERS, ineligibility
from .quality import BatchScreen, QualityIssue, bounds_for, feature_matrix, quality_issues

HISTORY_EVERY = 50  # the error-rate history holds one point per this many joined pairs
_NAN = math.nan
_version, _served_by = itemgetter(1), itemgetter(2)  # PredictionPoint fields


@dataclass
class Signals:
    """What one batch showed. Rows are positions in the batch; lists are in batch order."""

    fresh: int = 0  # predictions that were not re-deliveries
    ignored: list[tuple[int, str]] = field(default_factory=list)  # (row, reason) not monitored
    joined: list[tuple[int, JoinedPair]] = field(default_factory=list)
    alarms: list[tuple[int, DriftAlarm, str]] = field(default_factory=list)  # (row, alarm, cause)
    issues: list[tuple[int, list[QualityIssue]]] = field(default_factory=list)
    checked: int = 0  # predictions whose features were checked (quality, drift, daily)
    evicted: dict[str, int] = field(default_factory=dict)  # join buffer evictions by reason


class SignalKernel:
    """Everything one model's monitor computes from its telemetry."""

    def __init__(self, model_name: str, config: DetectorConfig) -> None:
        self.model_name = model_name
        self.config = config
        self.serving_version: int | None = None
        self.reference: dict[str, FeatureStats] = {}
        self.joiner = Joiner(config.join_max_pending, config.join_max_wait_s)
        self.counts: Counter[str] = Counter()
        self.history: deque[tuple[float, float, int]] = deque(maxlen=720)
        self.daily: DailyBook | None = None
        self.features: dict[str, Stream] = {}
        self.scales: dict[str, Stream] = {}
        self.categories: dict[str, CategoryStream] = {}
        self.task: Task = "binary"
        self.residuals: ResidualStream | None = None
        self._names: list[str] = []  # the number features
        self._known: dict[str, frozenset[str]] = {}  # category feature -> reference categories
        self._optional: frozenset[str] = frozenset()  # features missing in training too
        self.reset(None)

    # -- serving version and reference ----------------------------------------------------------

    def reset(
        self, version: int | None, *, forget_reference: bool = False, task: Task | None = None
    ) -> None:
        """Fresh detectors for ``version`` (the join buffers and daily windows stay)."""
        self.serving_version = version
        if task is not None:
            self.task = task
        if forget_reference:
            self.reference = {}
        self._fresh_error_stream()
        self._make_feature_streams()

    def _fresh_error_stream(self) -> None:
        self.error = self.config.stream(self.model_name, ERROR_STREAM, "error")
        self._errors = 0  # errors in the history point being filled
        self.residuals = None
        if self.task == "regression":
            cfg = self.error.config
            self.residuals = ResidualStream(
                reference_size=cfg.reference_size, window_size=cfg.window_size
            )

    def set_task(self, task: Task) -> None:
        """The serving version's task (its signature); a change restarts the error stream."""
        if task != self.task:
            self.task = task
            self._fresh_error_stream()

    def set_reference(self, reference: dict[str, FeatureStats]) -> None:
        """Turn the feature streams on once the serving version's reference is known."""
        self.reference = dict(reference)
        numeric = _numeric(self.reference)
        self._names = sorted(numeric)
        self._known = {
            n: frozenset(map(str, s.frequencies))
            for n, s in sorted(self.reference.items())
            if s.kind == "category"
        }
        self._optional = frozenset(n for n, s in self.reference.items() if s.missing_rate > 0)
        self._bounds = bounds_for(numeric)
        self._means = np.array([self.reference[n].mean for n in self._names])
        self._stds = np.array([self.reference[n].std or 1.0 for n in self._names])
        self._screen = BatchScreen(self._names, self._bounds, self.config.outlier_z)
        self._make_feature_streams()
        if self.config.daily_enabled:
            old, self.daily = self.daily, DailyBook(self.model_name, numeric)
            if old is not None and old.day is not None:  # today keeps its bins until midnight
                self.daily.resume(old.day, list(old.features.values()))
                dropped = [w for w in old.features.values() if w.feature not in self.reference]
                self.daily.finished = old.finished + [w for w in dropped if w.dirty]

    def _make_feature_streams(self) -> None:
        cfg, names = self.config, sorted(_numeric(self.reference))
        self.features, self.scales, self.categories = {}, {}, {}
        if cfg.feature_drift_enabled:
            self.features = {n: cfg.stream(self.model_name, n, "mean") for n in names}
            if cfg.scale_drift_enabled:
                self.scales = {n: cfg.stream(self.model_name, n, "scale") for n in names}
            self.categories = {
                n: CategoryStream(n, s, window=cfg.category_window, alpha=cfg.alpha)
                for n, s in sorted(self.reference.items())
                if s.kind == "category"
            }

    # -- the two entry points -------------------------------------------------------------------

    def predictions(
        self,
        now: datetime,
        *,
        prediction_ids: list[str],
        versions: list[int],
        served_by: list[str],
        labels: list[Any],
        features: list[dict[str, Any]],
        event_ids: list[str],
    ) -> Signals:
        """A batch of predictions (``labels``: what each predicted, the class or, for a
        regression, the value): re-deliveries dropped, the monitored ones' features into the
        drift streams, the quality screen and the daily windows, then every new one into the
        join (the pairs it completes feed the error stream)."""
        signals = Signals()
        n = len(prediction_ids)
        self.joiner.expire(now)
        columns = zip(
            prediction_ids, versions, served_by, labels, event_ids, repeat(now, n), strict=True
        )
        # tuple.__new__ builds the named tuples without running PredictionPoint's Python __new__
        points = list(map(tuple.__new__, repeat(PredictionPoint), columns))
        fresh, pairs = self.joiner.add_predictions(points)  # type: ignore[arg-type]
        signals.fresh = len(fresh)
        if len(fresh) < n:
            self.counts["duplicate_predictions"] += n - len(fresh)
        self.counts["predictions"] += len(fresh)
        monitored = self._monitored(fresh, versions, served_by, signals)
        if monitored:
            self.counts["monitored_predictions"] += len(monitored)
            if self.reference:
                self._inputs(monitored, features, event_ids, now, signals)
        feature_alarms = len(signals.alarms)
        self._feed_pairs(pairs, now, signals)
        if 0 < feature_alarms < len(signals.alarms):  # stable: a point's features, then its error
            signals.alarms.sort(key=itemgetter(0))
        signals.evicted = self.joiner.drain_evictions()
        return signals

    def labels(
        self,
        now: datetime,
        *,
        prediction_ids: list[str],
        labels: list[Any],
        event_ids: list[str],
    ) -> Signals:
        """A batch of labels (the true class or value): each joins its prediction (or waits);
        the pairs feed the error stream."""
        signals = Signals()
        self.counts["labels"] += len(prediction_ids)
        self.joiner.expire(now)
        pairs = self.joiner.add_labels(prediction_ids, labels, event_ids, now)
        self._feed_pairs(pairs, now, signals)
        signals.evicted = self.joiner.drain_evictions()
        return signals

    # -- steps ----------------------------------------------------------------------------------

    def _monitored(
        self, rows: list[int], versions: list[int], served_by: list[str], signals: Signals
    ) -> list[int]:
        """The rows ``policy.ineligibility`` lets through; the others go to ``signals.ignored``."""
        every = len(rows) == len(versions)
        chosen_versions = versions if every else [versions[k] for k in rows]
        chosen_servers = served_by if every else [served_by[k] for k in rows]
        if set(chosen_versions) == {self.serving_version} and (
            set(chosen_servers) <= MONITORED_SERVERS
        ):
            return rows
        monitored: list[int] = []
        for k in rows:
            reason = ineligibility(versions[k], served_by[k], self.serving_version)
            if reason is None:
                monitored.append(k)
            else:
                signals.ignored.append((k, reason))
                self.counts[f"ignored_{reason}"] += 1
        return monitored

    def _inputs(
        self,
        rows: list[int],
        features: list[dict[str, Any]],
        event_ids: list[str],
        now: datetime,
        signals: Signals,
    ) -> None:
        """The monitored rows' features: drift streams, quality screen, daily windows."""
        names = self._names
        chosen = features if len(rows) == len(features) else [features[k] for k in rows]
        matrix = feature_matrix(chosen, names)
        found = self._feed_features(matrix)
        flagged = set(self._screen.flagged(matrix).tolist())
        if self._known:
            found += self._feed_categories(chosen, flagged)
        for i, _, _, alarm in sorted(found, key=lambda hit: hit[:3]):
            k = rows[i]
            signals.alarms.append((k, alarm, event_ids[k]))
        signals.checked = len(rows)
        width = len(self.reference)
        if max(map(len, chosen)) > width:  # an unexpected feature is a schema issue
            flagged.update(i for i, row in enumerate(chosen) if len(row) > width)
        for i in sorted(flagged):
            issues = quality_issues(
                chosen[i],
                self._bounds,
                self.config.outlier_z,
                categories=self._known,
                optional=self._optional,
            )
            if issues:
                signals.issues.append((rows[i], issues))
        if self.daily is not None:
            self.daily.add(names, matrix, now)

    def _feed_categories(
        self, chosen: list[dict[str, Any]], flagged: set[int]
    ) -> list[tuple[int, int, int, DriftAlarm]]:
        """Each category column: counted per batch; its known categories, in order, into its
        chi-square windows. A column with a missing, unseen or non-string value adds its rows
        to ``flagged`` (the per-row quality check) and feeds only its known values."""
        found: list[tuple[int, int, int, DriftAlarm]] = []
        offset = len(self._names)
        for j, (name, known) in enumerate(self._known.items()):
            column = list(map(dict.get, chosen, repeat(name)))
            seen = set(column)
            odd = seen - known
            stream = self.categories.get(name)
            if not odd:
                hits = stream.update_many(column) if stream is not None else []
                found.extend((i, offset + j, 0, alarm) for i, alarm in hits)
                continue
            positions = [i for i, value in enumerate(column) if value in known]
            if odd != {None} or name not in self._optional:
                flagged.update(i for i, value in enumerate(column) if value not in known)
            if stream is not None:
                hits = stream.update_many([column[i] for i in positions])
                found.extend((positions[i], offset + j, 0, alarm) for i, alarm in hits)
        return found

    def _feed_features(self, matrix: np.ndarray) -> list[tuple[int, int, int, DriftAlarm]]:
        """Each feature's standardised values into its mean stream and their magnitudes into
        its variance stream; a missing or non-finite value feeds neither. The alarms as (row,
        feature, mean 0 / scale 1, alarm), to be put in the per-point order: point, feature,
        mean before scale."""
        found: list[tuple[int, int, int, DriftAlarm]] = []
        if not self.features:
            return found
        z = (matrix - self._means) / self._stds
        if np.isfinite(z).all():  # the usual batch: whole columns
            for j, (name, values) in enumerate(zip(self._names, z.T.tolist(), strict=True)):
                for i, alarm in self.features[name].update_many(values):
                    found.append((i, j, 0, alarm))
            if self.scales:  # the variance streams of all features at once
                picked = [j for j, name in enumerate(self._names) if name in self.scales]
                streams = [self.scales[self._names[j]] for j in picked]
                magnitudes = np.abs(z if len(picked) == z.shape[1] else z[:, picked])
                for i, at, alarm in update_columns(streams, magnitudes):
                    found.append((i, picked[at], 1, alarm))
        else:  # per column, only the finite values (positions in ``matrix``)
            for j, name in enumerate(self._names):
                column = z[:, j]
                finite = np.flatnonzero(np.isfinite(column))
                positions = finite.tolist()
                values = column[finite]
                for i, alarm in self.features[name].update_many(values.tolist()):
                    found.append((positions[i], j, 0, alarm))
                if name in self.scales:
                    for i, alarm in self.scales[name].update_many(np.abs(values)):
                        found.append((positions[i], j, 1, alarm))
        return found

    def _feed_pairs(
        self, pairs: list[tuple[int, JoinedPair]], now: datetime, signals: Signals
    ) -> None:
        """Joined pairs in order -> the error stream (predicted label != label), for the pairs
        whose prediction is still monitored (the serving version may have changed meanwhile)."""
        if not pairs:
            return
        signals.joined = pairs
        self.counts["joined"] += len(pairs)
        found = [pair[0] for _, pair in pairs]
        if set(map(_version, found)) == {self.serving_version} and (
            set(map(_served_by, found)) <= MONITORED_SERVERS
        ):
            fed = pairs
        else:
            fed = [
                (k, pair)
                for k, pair in pairs
                if ineligibility(pair[0][1], pair[0][2], self.serving_version) is None
            ]
            if len(fed) < len(pairs):  # the predictions themselves were counted on arrival
                self.counts["pairs_ignored"] += len(pairs) - len(fed)
        if not fed:
            return
        fed, errors = self._errors_of(fed)
        if self.residuals is not None:
            taken, errors = self.residuals.exceedances(errors)
            fed = fed[taken:]
            self.counts["residuals_warmup"] += taken
        if not errors:
            return
        self.counts["errors_fed"] += len(errors)
        self._record_history(errors, self.error.observations, now)
        for i, alarm in self.error.update_many(errors):
            k, pair = fed[i]
            signals.alarms.append((k, alarm, pair.tipping_event_id))

    def _errors_of(
        self, fed: list[tuple[int, JoinedPair]]
    ) -> tuple[list[tuple[int, JoinedPair]], list[float]]:
        """The pairs that can be scored and, per pair, the misclassification (0/1) of a
        classifier or the residual of a regression. Not scored: a regression pair that is not
        a pair of numbers, a classifier's prediction with no class (a regression's prediction
        reaching a model known as a classifier)."""
        if self.task == "regression":
            errors = [residual(pair[0][3], pair[1]) for _, pair in fed]
        else:
            errors = [
                0.0 if pair[0][3] == pair[1] else _misclassified(pair[0][3], pair[1])
                for _, pair in fed
            ]
        if _NAN not in errors:  # by identity: both return the one ``math.nan``
            return fed, errors
        kept = [(item, e) for item, e in zip(fed, errors, strict=True) if e == e]
        self.counts["pairs_unscored"] += len(errors) - len(kept)
        return [item for item, _ in kept], [e for _, e in kept]

    def _record_history(self, errors: list[float], observed: int, now: datetime) -> None:
        """The error rate of every ``HISTORY_EVERY`` consecutive points (for the report)."""
        at, n = 0, len(errors)
        while at < n:
            take = min(HISTORY_EVERY - observed % HISTORY_EVERY, n - at)
            self._errors += int(sum(errors[at : at + take]))
            observed += take
            at += take
            if observed % HISTORY_EVERY == 0:
                self.history.append((now.timestamp(), self._errors / HISTORY_EVERY, observed))
                self._errors = 0

    # -- streams, checkpoints, status -----------------------------------------------------------

    def stream_of(self, feature: str, kind: str) -> Stream | CategoryStream | None:
        if kind == "error" or feature == ERROR_STREAM:
            return self.error
        if kind == "category":
            return self.categories.get(feature)
        return (self.scales if kind == "scale" else self.features).get(feature)

    def streams(self) -> list[Stream | CategoryStream]:
        inputs = [*self.features.values(), *self.scales.values(), *self.categories.values()]
        return [self.error, *inputs]

    def performance(self, newest: int | None = None) -> dict[str, float | None]:
        """The serving version's live numbers over its newest ``newest`` labelled points (all
        it keeps by default): accuracy for a classifier, RMSE and MAE for a regression."""
        if self.residuals is not None:
            count = len(self.residuals.recent) if newest is None else newest
            rmse, mae = self.residuals.live(count)
            return {"rmse": rmse, "mae": mae, "rmse_upper": self.residuals.rmse_upper(count)}
        recent = list(self.error.recent)
        if newest is not None:
            recent = recent[-newest:] if newest > 0 else []
        return {"accuracy": 1.0 - sum(recent) / len(recent) if recent else None}

    def error_rate(self) -> float | None:
        return self.error.mean() if self.error.observations else None

    def snapshot(self) -> dict[str, Any]:
        """The detector windows and the error-rate history, JSON-ready (no pickling)."""
        snap: dict[str, Any] = {
            "streams": [s.snapshot() for s in self.streams()],
            "history": [list(h) for h in self.history],
            "join": self.joiner.snapshot(),
            "counts": dict(self.counts),
        }
        if self.residuals is not None:
            snap["residuals"] = self.residuals.snapshot()
        return snap

    def restore(self, snap: dict[str, Any]) -> int:
        """Replay a ``snapshot`` into the streams that have seen nothing yet; returns how many."""
        restored = 0
        for item in snap.get("streams", []):
            stream = self.stream_of(item["feature"], item["kind"])
            if stream is not None and stream.observations == 0:
                stream.restore(item)
                restored += 1
        if self.residuals is not None and snap.get("residuals") and not self.residuals.reference:
            self.residuals.restore(snap["residuals"])
        self.history.extend(tuple(h) for h in snap.get("history", []))
        if snap.get("join"):
            self.counts["restored_pending"] += self.joiner.restore(snap["join"])
        self.counts.update({k: int(v) for k, v in (snap.get("counts") or {}).items()})
        self.counts["restored_streams"] += restored
        return restored

    def detectors(self) -> dict[str, Any]:
        return {
            ERROR_STREAM: self.error.state(),
            **{name: s.state() for name, s in self.features.items()},
            **{f"{name}:scale": s.state() for name, s in self.scales.items()},
            **{name: s.state() for name, s in self.categories.items()},
        }


def _numeric(reference: dict[str, FeatureStats]) -> dict[str, FeatureStats]:
    return {n: s for n, s in reference.items() if s.kind != "category"}


def _misclassified(predicted: Any, actual: Any) -> float:
    """A differing pair: an error unless the classes agree as strings; no class: not scored."""
    if predicted is None:
        return _NAN
    return 0.0 if class_of(predicted) == class_of(actual) else 1.0
