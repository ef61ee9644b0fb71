"""The prediction/label join: either arrival order, duplicates, TTL and bounded buffers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from modelbus_monitor.join import Joiner, LabelPoint, PredictionPoint

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def pred(pid: str, at: datetime = T0, label: int = 1) -> PredictionPoint:
    return PredictionPoint(pid, 1, "champion", label, {"x": 0.0}, uuid.uuid4(), at)


def lab(pid: str, at: datetime = T0, label: int = 0) -> LabelPoint:
    return LabelPoint(pid, label, uuid.uuid4(), at)


def test_prediction_then_label_joins_and_tipping_event_is_the_label():
    joiner = Joiner(10, 60)
    assert joiner.add_prediction(pred("p1"), T0) is None
    label = lab("p1")
    pair = joiner.add_label(label, T0)
    assert pair is not None
    assert pair.prediction.prediction_id == "p1"
    assert pair.error == 1
    assert pair.tipping_event_id == label.event_id
    assert joiner.pending == {"predictions": 0, "labels": 0}


def test_label_then_prediction_joins_and_tipping_event_is_the_prediction():
    joiner = Joiner(10, 60)
    assert joiner.add_label(lab("p1", label=1), T0) is None
    prediction = pred("p1", label=1)
    pair = joiner.add_prediction(prediction, T0)
    assert pair is not None
    assert pair.error == 0
    assert pair.tipping_event_id == prediction.event_id


def test_redelivered_prediction_or_label_does_not_join_twice():
    joiner = Joiner(10, 60)
    joiner.add_prediction(pred("p1"), T0)
    assert joiner.add_label(lab("p1"), T0) is not None
    assert joiner.add_label(lab("p1"), T0) is None
    assert joiner.add_prediction(pred("p1"), T0) is None
    assert joiner.joined == 1
    assert joiner.duplicates == 2
    assert joiner.pending == {"predictions": 0, "labels": 0}


def test_buffers_are_bounded_and_evict_oldest_first():
    joiner = Joiner(3, 3600)
    for i in range(5):
        joiner.add_prediction(pred(f"p{i}"), T0)
        joiner.add_label(lab(f"l{i}"), T0)
    assert list(joiner.predictions) == ["p2", "p3", "p4"]
    assert list(joiner.labels) == ["l2", "l3", "l4"]
    assert joiner.evicted == {"prediction_overflow": 2, "label_overflow": 2}
    assert joiner.drain_evictions() == {"prediction_overflow": 2, "label_overflow": 2}
    assert joiner.drain_evictions() == {}
    assert joiner.add_label(lab("p0"), T0) is None  # evicted: no join


def test_pending_entries_expire_after_max_wait():
    joiner = Joiner(100, 60)
    joiner.add_prediction(pred("old", T0), T0)
    joiner.add_label(lab("old-label", T0), T0)
    later = T0 + timedelta(seconds=61)
    joiner.add_prediction(pred("new", later), later)
    assert joiner.add_label(lab("old", later), later) is None
    assert joiner.evicted["prediction_expired"] == 1
    assert joiner.evicted["label_expired"] == 1
    assert "new" in joiner.predictions


def test_batches_join_exactly_like_points():
    """The batch methods (with their all-new fast paths) against one point at a time, on
    batches of new, repeated, early and late ids. (Buffers large enough not to overflow: when
    one does, a batch evicts after the whole batch, points one at a time.)"""
    import random

    rng = random.Random(3)
    batched, single = Joiner(10_000, 3600), Joiner(10_000, 3600)
    got: list[tuple[str, int, object]] = []
    want: list[tuple[str, int, object]] = []
    for step in range(300):
        now = T0 + timedelta(seconds=step)
        size = rng.choice([1, 5, 20, 60])
        pool = rng.choice([30, 200, 10_000])  # small pools repeat ids, large ones rarely
        ids = [f"p{rng.randrange(pool)}" for _ in range(size)]
        if rng.random() < 0.5:
            points = [pred(pid, now, label=rng.randrange(2)) for pid in ids]
            batched.expire(now)
            fresh = batched.fresh_predictions(points)
            pairs = batched.add_fresh_predictions(points, fresh)
            got += [(p.prediction.prediction_id, p.label, p.tipping_event_id) for _, p in pairs]
            for point in points:
                pair = single.add_prediction(point, now)
                if pair is not None:
                    want.append((pair.prediction.prediction_id, pair.label, pair.tipping_event_id))
        else:
            labels = [lab(pid, now, label=rng.randrange(2)) for pid in ids]
            batched.expire(now)
            pairs = batched.add_labels(
                [x.prediction_id for x in labels],
                [x.label for x in labels],
                [x.event_id for x in labels],
                now,
            )
            got += [(p.prediction.prediction_id, p.label, p.tipping_event_id) for _, p in pairs]
            for label in labels:
                pair = single.add_label(label, now)
                if pair is not None:
                    want.append((pair.prediction.prediction_id, pair.label, pair.tipping_event_id))
        assert got == want, step
        assert list(batched.predictions) == list(single.predictions), step
        assert list(batched.labels) == list(single.labels), step
    assert list(batched.predictions) == list(single.predictions)
    assert list(batched.labels) == list(single.labels)
    assert (batched.joined, batched.duplicates) == (single.joined, single.duplicates)
    assert not batched.evicted and not single.evicted and batched.joined > 100
