"""The prediction/label join, part of the signal kernel: a batch of predictions or of labels
matched on prediction_id, in either arrival order.

Both pending buffers are bounded (oldest evicted first) and expire after ``max_wait_s``; every
eviction is counted. Recently joined ids (as many as the buffers hold) are remembered so a
re-delivered prediction or label, even with a new event id, does not join twice.

Batch entry points only (``expire``, ``add_predictions``, ``add_labels``), with the semantics
of taking the batch one point at a time (the oracle, ``tests/reference_kernel.py``, does
exactly that). The usual batch (ids all new, none waiting, none joined) is recognised with set
operations and then handled with bulk dict updates and ``map`` over the columns, trimming and
forgetting once per batch: with distinct new ids the order of those steps cannot change the
result. Any other batch takes the plain per-point loop.
"""

from __future__ import annotations

from collections import Counter, deque
from datetime import UTC, datetime, timedelta
from itertools import islice, repeat
from operator import itemgetter
from typing import Any, NamedTuple, TypeVar

from .outcomes import misclassified

T = TypeVar("T")


class PredictionPoint(NamedTuple):
    """A prediction as the join keeps it until its label arrives."""

    prediction_id: str
    version: int
    served_by: str
    label: Any  # what it predicted: the class (binary 0/1, multiclass str) or the value
    event_id: str
    at: datetime


class LabelPoint(NamedTuple):
    prediction_id: str
    label: Any  # the true class or value (LabelObserved.label)
    event_id: str
    at: datetime


class JoinedPair(NamedTuple):
    """A prediction and its label; what their difference means (a misclassification, a
    residual) is the task's, see ``outcomes.py``."""

    prediction: PredictionPoint
    label: Any
    tipping_event_id: str  # the event id of whichever side arrived last

    @property
    def error(self) -> int:
        """Misclassified (a classifier's pair; classes compared as strings)."""
        return int(misclassified(self.prediction.label, self.label))


class Joiner:
    """Two bounded, TTL'd buffers of unmatched predictions and labels."""

    def __init__(self, max_pending: int, max_wait_s: float) -> None:
        self.max_pending = max_pending
        self.max_wait = timedelta(seconds=max_wait_s)
        # plain dicts keep arrival order; the oldest entries are dropped in bulk
        self.predictions: dict[str, PredictionPoint] = {}
        self.labels: dict[str, LabelPoint] = {}
        self._joined: set[str] = set()  # recently joined ids, oldest first in _joined_order
        self._joined_order: deque[str] = deque()
        self.evicted: Counter[str] = Counter()
        self.duplicates = 0
        self.joined = 0
        self._unreported: Counter[str] = Counter()

    def expire(self, now: datetime) -> None:
        """Drop entries older than ``max_wait`` (buffers are in arrival order)."""
        cutoff = now - self.max_wait
        for kind, buffer in (("prediction", self.predictions), ("label", self.labels)):
            expired = 0
            for point in buffer.values():
                if point.at >= cutoff:
                    break
                expired += 1
            if expired:
                _drop_oldest(buffer, expired)
                self._count_eviction(f"{kind}_expired", expired)

    def add_predictions(
        self, points: list[PredictionPoint]
    ) -> tuple[list[int], list[tuple[int, JoinedPair]]]:
        """A batch of predictions (buffers expired for its time): the rows that are new (the
        others are re-deliveries, counted as duplicates) and, in order, the (row, pair) of
        those whose label was waiting. The others wait."""
        ids = list(map(_prediction_id, points))
        new = set(ids)
        if not (
            len(new) == len(ids)
            and new.isdisjoint(self.predictions)
            and new.isdisjoint(self._joined)
        ):
            return self._add_predictions_one_by_one(points)
        rows = list(range(len(points)))
        waiting = self.predictions
        if not self.labels:  # the usual case, labels come later: every prediction waits
            waiting.update(zip(ids, points, strict=True))
            self._trim(waiting, "prediction")
            return rows, []
        pairs: list[tuple[int, JoinedPair]] = []
        take_label = self.labels.pop
        for k, point in enumerate(points):
            label = take_label(ids[k], None)
            if label is None:
                waiting[ids[k]] = point
            else:
                pairs.append((k, self._join(point, label.label, point.event_id)))
        self._trim(waiting, "prediction")
        self._forget_oldest_joined()
        return rows, pairs

    def _add_predictions_one_by_one(
        self, points: list[PredictionPoint]
    ) -> tuple[list[int], list[tuple[int, JoinedPair]]]:
        fresh: list[int] = []
        pairs: list[tuple[int, JoinedPair]] = []
        waiting, joined = self.predictions, self._joined
        for k, point in enumerate(points):
            pid = point.prediction_id
            if pid in joined or pid in waiting:
                self.duplicates += 1
                continue
            fresh.append(k)
            label = self.labels.pop(pid, None)
            if label is None:
                waiting[pid] = point
                self._trim(waiting, "prediction")
            else:
                pairs.append((k, self._join(point, label.label, point.event_id)))
                self._forget_oldest_joined()
        return fresh, pairs

    def add_labels(
        self, prediction_ids: list[str], labels: list[Any], event_ids: list[str], now: datetime
    ) -> list[tuple[int, JoinedPair]]:
        """A batch of labels as columns (buffers expired for ``now``): in order, the (row,
        pair) of those whose prediction was waiting. The others wait (re-deliveries are counted
        as duplicates)."""
        new = set(prediction_ids)
        if (
            len(new) == len(prediction_ids)
            and new.isdisjoint(self._joined)
            and new.isdisjoint(self.labels)
        ):
            return self._add_new_labels(prediction_ids, labels, event_ids, now)
        pairs: list[tuple[int, JoinedPair]] = []
        waiting, joined = self.labels, self._joined
        for k, pid in enumerate(prediction_ids):
            if pid in joined or pid in waiting:
                self.duplicates += 1
                continue
            prediction = self.predictions.pop(pid, None)
            if prediction is None:
                waiting[pid] = LabelPoint(pid, labels[k], event_ids[k], now)
                self._trim(waiting, "label")
            else:
                pairs.append((k, self._join(prediction, labels[k], event_ids[k])))
                self._forget_oldest_joined()
        return pairs

    def _add_new_labels(
        self, prediction_ids: list[str], labels: list[Any], event_ids: list[str], now: datetime
    ) -> list[tuple[int, JoinedPair]]:
        """``add_labels`` for labels that are all distinct, neither joined nor waiting: each
        either takes its prediction or waits, with ``map`` over the columns."""
        found = list(map(self.predictions.pop, prediction_ids, repeat(None)))
        rows: list[int] | range = range(len(prediction_ids))
        joined_ids, joined_labels, tipping = prediction_ids, labels, event_ids
        if None in found:  # some predictions have not arrived (or expired): those labels wait
            rows = [k for k, prediction in enumerate(found) if prediction is not None]
            waiting = self.labels
            for k, prediction in enumerate(found):
                if prediction is None:
                    pid = prediction_ids[k]
                    waiting[pid] = LabelPoint(pid, labels[k], event_ids[k], now)
            self._trim(waiting, "label")
            found = [found[k] for k in rows]
            joined_ids = [prediction_ids[k] for k in rows]
            joined_labels = [labels[k] for k in rows]
            tipping = [event_ids[k] for k in rows]
        self._joined.update(joined_ids)
        self._joined_order.extend(joined_ids)
        self.joined += len(joined_ids)
        # tuple.__new__ builds the named tuples without running JoinedPair's Python __new__
        columns = zip(found, joined_labels, tipping, strict=True)
        made = map(tuple.__new__, repeat(JoinedPair), columns)
        pairs = list(zip(rows, made, strict=True))
        self._forget_oldest_joined()
        return pairs  # type: ignore[return-value]

    def _join(self, prediction: PredictionPoint, label: Any, tipping: str) -> JoinedPair:
        self._joined.add(prediction.prediction_id)
        self._joined_order.append(prediction.prediction_id)
        self.joined += 1
        return JoinedPair(prediction, label, tipping)

    def _trim(self, buffer: dict[str, T], kind: str) -> None:
        excess = len(buffer) - self.max_pending
        if excess > 0:
            _drop_oldest(buffer, excess)
            self._count_eviction(f"{kind}_overflow", excess)

    def _forget_oldest_joined(self) -> None:
        while len(self._joined_order) > self.max_pending:
            self._joined.discard(self._joined_order.popleft())

    def _count_eviction(self, reason: str, n: int) -> None:
        self.evicted[reason] += n
        self._unreported[reason] += n

    def drain_evictions(self) -> dict[str, int]:
        """Evictions since the last call, by reason (for metrics)."""
        out = dict(self._unreported)
        self._unreported.clear()
        return out

    def snapshot(self) -> dict[str, Any]:
        """Both buffers and the recently joined ids, as columns (JSON: no pickling), oldest
        first; ``restore`` puts them back in the same order."""
        predictions = list(self.predictions.values())
        labels = list(self.labels.values())
        return {
            "predictions": {
                "prediction_id": [p.prediction_id for p in predictions],
                "version": [p.version for p in predictions],
                "served_by": [p.served_by for p in predictions],
                "label": [p.label for p in predictions],
                "event_id": [p.event_id for p in predictions],
                "at": [p.at.timestamp() for p in predictions],
            },
            "labels": {
                "prediction_id": [p.prediction_id for p in labels],
                "label": [p.label for p in labels],
                "event_id": [p.event_id for p in labels],
                "at": [p.at.timestamp() for p in labels],
            },
            "joined": list(self._joined_order),
        }

    def restore(self, snap: dict[str, Any]) -> int:
        """Put a ``snapshot``'s buffers back (into an empty joiner); returns the entries."""
        if self.predictions or self.labels or self._joined:
            return 0
        p, lab = snap.get("predictions") or {}, snap.get("labels") or {}
        for pid, version, served_by, label, event_id, at in zip(
            p.get("prediction_id", ()),
            p.get("version", ()),
            p.get("served_by", ()),
            p.get("label", ()),
            p.get("event_id", ()),
            p.get("at", ()),
            strict=True,
        ):
            self.predictions[pid] = PredictionPoint(
                pid, int(version), served_by, label, event_id, _from_ts(at)
            )
        for pid, label, event_id, at in zip(
            lab.get("prediction_id", ()),
            lab.get("label", ()),
            lab.get("event_id", ()),
            lab.get("at", ()),
            strict=True,
        ):
            self.labels[pid] = LabelPoint(pid, label, event_id, _from_ts(at))
        joined = [str(i) for i in snap.get("joined") or ()]
        self._joined_order.extend(joined)
        self._joined.update(joined)
        self._trim(self.predictions, "prediction")
        self._trim(self.labels, "label")
        self._forget_oldest_joined()
        return len(self.predictions) + len(self.labels)

    @property
    def pending(self) -> dict[str, int]:
        return {"predictions": len(self.predictions), "labels": len(self.labels)}


_prediction_id = itemgetter(0)  # PredictionPoint.prediction_id


def _from_ts(at: float) -> datetime:
    return datetime.fromtimestamp(float(at), UTC)


def _drop_oldest(buffer: dict[str, T], n: int) -> None:
    """Remove the ``n`` oldest entries (dicts keep insertion order), in one pass."""
    for key in list(islice(buffer, n)):
        del buffer[key]
