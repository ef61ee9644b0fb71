"""Pure prediction/label join: match on prediction_id in either arrival order.

Both pending buffers are bounded (oldest evicted first) and expire after ``max_wait_s``; every
eviction is counted. Recently joined ids are remembered (bounded) so a re-delivered prediction or
label with a new event id does not join twice.
"""

from __future__ import annotations

import uuid
from collections import Counter, deque
from collections.abc import Iterable
from datetime import datetime, timedelta
from itertools import islice, repeat
from operator import itemgetter
from typing import NamedTuple, TypeVar

T = TypeVar("T")


class PredictionPoint(NamedTuple):
    prediction_id: str
    version: int
    served_by: str
    label: int
    features: dict[str, float]
    event_id: uuid.UUID | str
    at: datetime


class LabelPoint(NamedTuple):
    prediction_id: str
    label: int
    event_id: uuid.UUID | str
    at: datetime


class JoinedPair(NamedTuple):
    prediction: PredictionPoint
    label: int
    tipping_event_id: uuid.UUID | str  # the event id of whichever side arrived last

    @property
    def error(self) -> int:
        return int(self.prediction.label != self.label)


class Joiner:
    """Two bounded, TTL'd buffers of unmatched predictions and labels."""

    def __init__(self, max_pending: int, max_wait_s: float) -> None:
        self.max_pending = max_pending
        self.max_wait = timedelta(seconds=max_wait_s)
        # plain dicts keep arrival order and are cheaper than OrderedDict; the oldest entries
        # are dropped in bulk (``_drop_oldest``)
        self.predictions: dict[str, PredictionPoint] = {}
        self.labels: dict[str, LabelPoint] = {}
        self._joined: set[str] = set()  # recently joined ids, oldest first in _joined_order
        self._joined_order: deque[str] = deque()
        self.evicted: Counter[str] = Counter()
        self.duplicates = 0
        self.joined = 0
        self._unreported: Counter[str] = Counter()

    def add_prediction(
        self, point: PredictionPoint, now: datetime, *, expire: bool = True
    ) -> JoinedPair | None:
        """``expire=False``: the caller expired the buffers for ``now`` already (a batch)."""
        if expire:
            self.expire(now)
        if self._seen(point.prediction_id, self.predictions):
            return None
        label = self.labels.pop(point.prediction_id, None)
        if label is None:
            self._push(self.predictions, point.prediction_id, point, "prediction")
            return None
        return self._join(point, label.label, point.event_id)

    def add_label(
        self, point: LabelPoint, now: datetime, *, expire: bool = True
    ) -> JoinedPair | None:
        if expire:
            self.expire(now)
        if self._seen(point.prediction_id, self.labels):
            return None
        prediction = self.predictions.pop(point.prediction_id, None)
        if prediction is None:
            self._push(self.labels, point.prediction_id, point, "label")
            return None
        return self._join(prediction, point.label, point.event_id)

    def fresh_predictions(self, points: list[PredictionPoint]) -> list[int]:
        """Rows of ``points`` that are neither pending, joined nor repeated within the batch
        (the others are counted as duplicates)."""
        waiting, joined = self.predictions, self._joined
        ids = set(map(_prediction_id, points))
        if len(ids) == len(points) and ids.isdisjoint(waiting) and ids.isdisjoint(joined):
            return list(range(len(points)))  # the common case: all new, checked as sets
        fresh: list[int] = []
        seen: set[str] = set()
        for k, point in enumerate(points):
            pid = point.prediction_id
            if pid in seen or pid in waiting or pid in joined:
                continue
            seen.add(pid)
            fresh.append(k)
        self.duplicates += len(points) - len(fresh)
        return fresh

    def add_fresh_predictions(
        self, points: list[PredictionPoint], rows: list[int]
    ) -> list[tuple[int, JoinedPair]]:
        """A batch of predictions already checked with ``knows_prediction`` (and the buffers
        expired): the ones whose label was waiting, as (row, pair), in order. Same result as
        ``add_prediction`` per point."""
        pairs: list[tuple[int, JoinedPair]] = []
        take_label = self.labels.pop
        waiting = self.predictions
        if not self.labels:  # the common case, labels come later: every point waits
            chosen = points if len(rows) == len(points) else [points[k] for k in rows]
            waiting.update(zip(map(_prediction_id, chosen), chosen, strict=True))
            self._trim(waiting, "prediction")
            return pairs
        for k in rows:
            point = points[k]
            label = take_label(point.prediction_id, None)
            if label is None:
                waiting[point.prediction_id] = point
            else:
                pairs.append((k, self._join(point, label.label, point.event_id)))
        self._trim(waiting, "prediction")
        return pairs

    def add_labels(
        self,
        prediction_ids: list[str],
        labels: list[int],
        event_ids: list[uuid.UUID] | list[str],
        now: datetime,
    ) -> list[tuple[int, JoinedPair]]:
        """A batch of labels as columns (buffers expired): the joined ones as (row, pair), in
        order; a ``LabelPoint`` is made only for a label that has to wait."""
        pairs: list[tuple[int, JoinedPair]] = []
        new_pair = tuple.__new__  # JoinedPair(...) runs Python code per pair
        take_prediction = self.predictions.pop
        joined, order, waiting = self._joined, self._joined_order, self.labels
        ids = set(prediction_ids)
        if len(ids) == len(prediction_ids) and ids.isdisjoint(joined) and ids.isdisjoint(waiting):
            return self._add_new_labels(prediction_ids, labels, event_ids, now)
        for k, pid in enumerate(prediction_ids):
            if pid in joined or pid in waiting:
                self.duplicates += 1
                continue
            prediction = take_prediction(pid, None)
            if prediction is None:
                waiting[pid] = LabelPoint(pid, labels[k], event_ids[k], now)
            else:
                joined.add(pid)
                order.append(pid)
                self.joined += 1
                pairs.append((k, new_pair(JoinedPair, (prediction, labels[k], event_ids[k]))))
        self._trim(waiting, "label")
        self._forget_oldest_joined()
        return pairs

    def _add_new_labels(
        self,
        prediction_ids: list[str],
        labels: list[int],
        event_ids: list[uuid.UUID] | list[str],
        now: datetime,
    ) -> list[tuple[int, JoinedPair]]:
        """``add_labels`` for labels that are all distinct, neither joined nor waiting: each
        either takes its prediction or waits, in C loops over the columns."""
        found = list(map(self.predictions.pop, prediction_ids, repeat(None)))
        rows: Iterable[int] = range(len(prediction_ids))
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
            labels = [labels[k] for k in rows]
            event_ids = [event_ids[k] for k in rows]  # type: ignore[assignment]
        else:
            joined_ids = prediction_ids
        self._joined.update(joined_ids)
        self._joined_order.extend(joined_ids)
        self.joined += len(joined_ids)
        made = map(tuple.__new__, repeat(JoinedPair), zip(found, labels, event_ids, strict=True))
        pairs = list(zip(rows, made, strict=True))
        self._forget_oldest_joined()
        return pairs  # type: ignore[return-value]

    def _trim(self, buffer: dict[str, T], kind: str) -> None:
        excess = len(buffer) - self.max_pending
        if excess > 0:
            _drop_oldest(buffer, excess)
            self.evicted[f"{kind}_overflow"] += excess
            self._unreported[f"{kind}_overflow"] += excess

    def _forget_oldest_joined(self) -> None:
        while len(self._joined_order) > self.max_pending:
            self._joined.discard(self._joined_order.popleft())

    def knows_prediction(self, prediction_id: str) -> bool:
        """Already pending or joined: a re-delivery that must not be counted again."""
        return prediction_id in self.predictions or prediction_id in self._joined

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
                self.evicted[f"{kind}_expired"] += expired
                self._unreported[f"{kind}_expired"] += expired

    def drain_evictions(self) -> dict[str, int]:
        """Evictions since the last call, by reason (for metrics)."""
        out = dict(self._unreported)
        self._unreported.clear()
        return out

    def _seen(self, prediction_id: str, buffer: dict[str, T]) -> bool:
        if prediction_id in self._joined or prediction_id in buffer:
            self.duplicates += 1
            return True
        return False

    def _push(self, buffer: dict[str, T], key: str, value: T, kind: str) -> None:
        buffer[key] = value
        self._trim(buffer, kind)

    def _join(
        self, prediction: PredictionPoint, label: int, tipping: uuid.UUID | str
    ) -> JoinedPair:
        self._joined.add(prediction.prediction_id)
        self._joined_order.append(prediction.prediction_id)
        self._forget_oldest_joined()
        self.joined += 1
        return JoinedPair(prediction, label, tipping)

    @property
    def pending(self) -> dict[str, int]:
        return {"predictions": len(self.predictions), "labels": len(self.labels)}


_prediction_id = itemgetter(0)  # PredictionPoint.prediction_id, in C


def _drop_oldest(buffer: dict[str, T], n: int) -> None:
    """Remove the ``n`` oldest entries (dicts keep insertion order), in one pass."""
    for key in list(islice(buffer, n)):
        del buffer[key]
