"""The prediction/label join: either arrival order, duplicates, TTL and bounded buffers, through
its batch entry points; and randomised batches against the per-point reference join."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

from modelbus_monitor.join import JoinedPair, Joiner, LabelPoint, PredictionPoint

from .reference_kernel import ReferenceJoiner

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def pred(pid: str, at: datetime = T0, label: int = 1) -> PredictionPoint:
    return PredictionPoint(pid, 1, "champion", label, str(uuid.uuid4()), at)


def lab(pid: str, at: datetime = T0, label: int = 0) -> LabelPoint:
    return LabelPoint(pid, label, str(uuid.uuid4()), at)


def predictions(joiner: Joiner, *points: PredictionPoint) -> list[JoinedPair]:
    joiner.expire(points[0].at)
    _, pairs = joiner.add_predictions(list(points))
    return [pair for _, pair in pairs]


def labels(joiner: Joiner, *points: LabelPoint) -> list[JoinedPair]:
    joiner.expire(points[0].at)
    ids = [p.prediction_id for p in points]
    values, events = [p.label for p in points], [p.event_id for p in points]
    return [pair for _, pair in joiner.add_labels(ids, values, events, points[0].at)]


def test_prediction_then_label_joins_and_tipping_event_is_the_label():
    joiner = Joiner(10, 60)
    assert predictions(joiner, pred("p1")) == []
    label = lab("p1")
    [pair] = labels(joiner, label)
    assert pair.prediction.prediction_id == "p1"
    assert pair.error == 1
    assert pair.tipping_event_id == label.event_id
    assert joiner.pending == {"predictions": 0, "labels": 0}


def test_label_then_prediction_joins_and_tipping_event_is_the_prediction():
    joiner = Joiner(10, 60)
    assert labels(joiner, lab("p1", label=1)) == []
    prediction = pred("p1", label=1)
    [pair] = predictions(joiner, prediction)
    assert pair.error == 0
    assert pair.tipping_event_id == prediction.event_id


def test_redelivered_prediction_or_label_does_not_join_twice():
    joiner = Joiner(10, 60)
    predictions(joiner, pred("p1"))
    assert len(labels(joiner, lab("p1"))) == 1
    assert labels(joiner, lab("p1")) == []
    fresh, pairs = joiner.add_predictions([pred("p1")])
    assert (fresh, pairs) == ([], [])
    assert (joiner.joined, joiner.duplicates) == (1, 2)
    assert joiner.pending == {"predictions": 0, "labels": 0}


def test_a_batch_repeating_an_id_keeps_the_first():
    joiner = Joiner(10, 60)
    first, again = pred("p1"), pred("p1")
    fresh, _ = joiner.add_predictions([first, pred("p2"), again])
    assert fresh == [0, 1] and joiner.duplicates == 1
    assert joiner.predictions["p1"] is first


def test_buffers_are_bounded_and_evict_oldest_first():
    joiner = Joiner(3, 3600)
    for i in range(5):
        predictions(joiner, pred(f"p{i}"))
        labels(joiner, lab(f"l{i}"))
    assert list(joiner.predictions) == ["p2", "p3", "p4"]
    assert list(joiner.labels) == ["l2", "l3", "l4"]
    assert joiner.evicted == {"prediction_overflow": 2, "label_overflow": 2}
    assert joiner.drain_evictions() == {"prediction_overflow": 2, "label_overflow": 2}
    assert joiner.drain_evictions() == {}
    assert labels(joiner, lab("p0")) == []  # evicted: no join


def test_pending_entries_expire_after_max_wait():
    joiner = Joiner(100, 60)
    predictions(joiner, pred("old", T0))
    labels(joiner, lab("old-label", T0))
    later = T0 + timedelta(seconds=61)
    predictions(joiner, pred("new", later))
    assert labels(joiner, lab("old", later)) == []
    assert joiner.evicted["prediction_expired"] == 1
    assert joiner.evicted["label_expired"] == 1
    assert "new" in joiner.predictions


def test_random_batches_join_exactly_like_the_reference_one_point_at_a_time():
    """New, repeated, early and late ids, with buffers small enough to overflow mid-batch."""
    rng = random.Random(3)
    for max_pending in (8, 50, 10_000):
        batched, single = Joiner(max_pending, 30), ReferenceJoiner(max_pending, 30)
        got: list[tuple[str, int, str]] = []
        want: list[tuple[str, int, str]] = []
        for step in range(300):
            now = T0 + timedelta(seconds=step)
            size = rng.choice([1, 5, 20, 60])
            pool = rng.choice([30, 200, 10_000])  # small pools repeat ids, large ones rarely
            ids = [f"p{rng.randrange(pool)}" for _ in range(size)]
            batched.expire(now)
            if rng.random() < 0.5:
                points = [pred(pid, now, label=rng.randrange(2)) for pid in ids]
                fresh, pairs = batched.add_predictions(points)
                want_fresh = []
                for k, point in enumerate(points):
                    single.expire(now)
                    new, pair = single.add_prediction(point)
                    want_fresh += [k] if new else []
                    if pair is not None:
                        want.append(
                            (pair.prediction.prediction_id, pair.label, pair.tipping_event_id)
                        )
                assert fresh == want_fresh, step
            else:
                points = [lab(pid, now, label=rng.randrange(2)) for pid in ids]
                pairs = batched.add_labels(
                    ids, [p.label for p in points], [p.event_id for p in points], now
                )
                for point in points:
                    single.expire(now)
                    pair = single.add_label(point)
                    if pair is not None:
                        want.append(
                            (pair.prediction.prediction_id, pair.label, pair.tipping_event_id)
                        )
            got += [(p.prediction.prediction_id, p.label, p.tipping_event_id) for _, p in pairs]
            assert got == want, step
            assert list(batched.predictions) == list(single.predictions), step
            assert list(batched.labels) == list(single.labels), step
            assert list(batched._joined_order) == list(single.joined_ids), step
        assert (batched.joined, batched.duplicates) == (single.joined, single.duplicates)
        assert batched.evicted == single.evicted and batched.joined > 100
        if max_pending < 100:
            assert batched.evicted["prediction_overflow"] and batched.evicted["label_overflow"]
