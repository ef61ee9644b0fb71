"""The signal kernel against its oracle (``reference_kernel.py``, one point at a time): random
streams cut into random batches must give the same signals in the same order (ignored
predictions, joined pairs, confirmed alarms with their causes, quality issues), the same
per-batch counts (new predictions, checked, evictions) and the same state (join buffers and
joined-id memory, every stream's windows and detector, daily windows, error-rate history,
counts)."""

from __future__ import annotations

import math
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelbus_contracts import FeatureStats
from modelbus_monitor.config import DetectorConfig
from modelbus_monitor.kernel import SignalKernel, Signals

from .reference_kernel import ReferenceKernel

T0 = datetime(2026, 1, 1, 23, 58, tzinfo=UTC)  # the stream crosses midnight: two daily windows
Q = {"p05": -1.64, "p25": -0.67, "p50": 0.0, "p75": 0.67, "p95": 1.64}
REFERENCE = {
    "x": FeatureStats(count=1000, mean=0.0, std=1.0, min=-4.0, max=4.0, quantiles=Q),
    "y": FeatureStats(count=1000, mean=10.0, std=2.0, min=2.0, max=18.0),
    "z": FeatureStats(count=1000, mean=5.0, std=0.0, min=5.0, max=5.0),
}
V2_REFERENCE = {name: REFERENCE[name] for name in ("x", "y")}


@dataclass
class Prediction:
    prediction_id: str
    version: int
    served_by: str
    label: int
    features: dict[str, float]
    event_id: str
    at: datetime


@dataclass
class Label:
    prediction_id: str
    label: int
    event_id: str
    at: datetime


@dataclass
class Promotion:
    version: int
    at: datetime


Event = Prediction | Label | Promotion


def stream(seed: int, n: int = 3000) -> list[Event]:
    """Predictions with their labels (mostly after, some before, some never, some twice),
    re-delivered predictions, other versions and servers, odd feature values, a pause longer
    than the join's TTL, a mean, variance and error-rate change at 55% and a promotion at 80%."""
    rng = random.Random(seed)
    now, version = T0, 1
    events: list[Event] = []
    later: list[tuple[int, Label]] = []  # labels due after the i-th prediction
    sent: list[Prediction] = []
    for i in range(n):
        now += timedelta(milliseconds=rng.choice([1, 20, 200]))
        if i == n // 3:
            now += timedelta(seconds=120)  # the join TTL in these tests is 60 s
        if i == int(n * 0.8):
            version = 2
            events.append(Promotion(2, now))
        for _, label in [due for due in later if due[0] <= i]:
            events.append(Label(label.prediction_id, label.label, label.event_id, now))
        later = [due for due in later if due[0] > i]
        if sent and rng.random() < 0.03:  # a re-delivery, sometimes with a new event id
            old = rng.choice(sent[-200:])
            event_id = old.event_id if rng.random() < 0.5 else str(uuid.uuid4())
            events.append(Prediction(**{**old.__dict__, "event_id": event_id, "at": now}))
            continue
        changed = i > n * 0.55
        prediction = Prediction(
            prediction_id=f"p{i}",
            version=version if rng.random() > 0.03 else 3 - version,
            served_by=rng.choices(["champion", "fallback", "shadow", "canary"], [90, 4, 3, 3])[0],
            label=rng.randrange(2),
            features=odd_features(rng, changed),
            event_id=str(uuid.uuid4()),
            at=now,
        )
        wrong = rng.random() < (0.4 if changed else 0.1)
        label = Label(prediction.prediction_id, prediction.label ^ wrong, str(uuid.uuid4()), now)
        roll = rng.random()
        if roll < 0.05:
            events.append(label)  # the label first
        events.append(prediction)
        sent.append(prediction)
        if 0.05 <= roll < 0.95:
            later.append((i + rng.randrange(30), label))
        if roll > 0.98:
            later.append((i + rng.randrange(60), label))  # delivered twice
        if rng.random() < 0.01:
            events.append(Label(f"unknown{i}", 1, str(uuid.uuid4()), now))
    return events


def odd_features(rng: random.Random, changed: bool) -> dict[str, float]:
    features = {
        "x": rng.gauss(1.0 if changed else 0.0, 1.0),
        "y": rng.gauss(10.0, 2.0 * (1.7 if changed else 1.0)),
        "z": 5.0,
    }
    roll = rng.random()
    if roll < 0.005:
        features["x"] = math.nan
    elif roll < 0.01:
        features["y"] = -math.inf
    elif roll < 0.015:
        del features["y"]
    elif roll < 0.02:
        features["w"] = 1.0  # not in the reference
    elif roll < 0.025:
        features["x"] = 40.0  # out of range
    elif roll < 0.03:
        features["x"] = 3
    return features


def batches(events: list[Event], limits: random.Random | int) -> list[list[tuple[int, Event]]]:
    """Runs of the same kind of event, each cut at a random length (or at most ``limits``); a
    promotion stands alone."""
    out: list[list[tuple[int, Event]]] = []
    limit = 0
    for at, event in enumerate(events):
        last = out[-1] if out else None
        if (
            last is None
            or type(last[-1][1]) is not type(event)
            or isinstance(event, Promotion)
            or len(last) >= limit
        ):
            out.append([])
            limit = limits if isinstance(limits, int) else limits.choice([1, 3, 7, 50, 400])
        out[-1].append((at, event))
    return out


@dataclass
class Observed:
    """Every signal with its position in the stream, and per-batch counts."""

    ignored: list[tuple[int, str]]
    joined: list[tuple[int, Any]]
    alarms: list[tuple[int, Any, str]]
    issues: list[tuple[int, Any]]
    per_batch: list[tuple[int, int, dict[str, int]]]  # (new predictions, checked, evictions)


def run_kernel(config: DetectorConfig, cut: list[list[tuple[int, Event]]]) -> tuple[Any, Observed]:
    kernel = SignalKernel("m", config)
    kernel.reset(1)
    kernel.set_reference(REFERENCE)
    seen = Observed([], [], [], [], [])
    for batch in cut:
        positions = [at for at, _ in batch]
        events = [event for _, event in batch]
        now = events[-1].at
        if isinstance(events[0], Promotion):
            kernel.reset(events[0].version, forget_reference=True)
            kernel.set_reference(V2_REFERENCE)
            continue
        if isinstance(events[0], Prediction):
            signals = kernel.predictions(
                now,
                prediction_ids=[e.prediction_id for e in events],
                versions=[e.version for e in events],
                served_by=[e.served_by for e in events],
                labels=[e.label for e in events],
                features=[e.features for e in events],
                event_ids=[e.event_id for e in events],
            )
        else:
            signals = kernel.labels(
                now,
                prediction_ids=[e.prediction_id for e in events],
                labels=[e.label for e in events],
                event_ids=[e.event_id for e in events],
            )
        record(seen, signals, positions)
    return kernel, seen


def record(seen: Observed, signals: Signals, positions: list[int]) -> None:
    seen.ignored += [(positions[k], reason) for k, reason in signals.ignored]
    seen.joined += [(positions[k], pair) for k, pair in signals.joined]
    seen.alarms += [(positions[k], alarm, cause) for k, alarm, cause in signals.alarms]
    seen.issues += [(positions[k], issues) for k, issues in signals.issues]
    evicted = {reason: n for reason, n in signals.evicted.items() if n}
    seen.per_batch.append((signals.fresh, signals.checked, evicted))


def run_reference(
    config: DetectorConfig, cut: list[list[tuple[int, Event]]]
) -> tuple[ReferenceKernel, Observed]:
    """The same batches, but one point at a time (each at its batch's time)."""
    ref = ReferenceKernel("m", config)
    ref.reset(1)
    ref.set_reference(REFERENCE)
    per_batch: list[tuple[int, int, dict[str, int]]] = []
    for batch in cut:
        now = batch[-1][1].at
        if isinstance(batch[0][1], Promotion):
            ref.reset(batch[0][1].version, forget_reference=True)
            ref.set_reference(V2_REFERENCE)
            continue
        fresh, checked, evicted = ref.counts["predictions"], ref.checked, ref.joiner.evicted.copy()
        for at, e in batch:
            if isinstance(e, Prediction):
                ref.prediction(
                    at,
                    now,
                    e.prediction_id,
                    e.version,
                    e.served_by,
                    e.label,
                    e.features,
                    e.event_id,
                )
            elif isinstance(e, Label):
                ref.label(at, now, e.prediction_id, e.label, e.event_id)
        evicted = ref.joiner.evicted - evicted
        per_batch.append((ref.counts["predictions"] - fresh, ref.checked - checked, dict(evicted)))
    return ref, Observed(ref.ignored, ref.joined, ref.alarms, ref.issues, per_batch)


def assert_same_state(kernel: SignalKernel, ref: ReferenceKernel) -> None:
    joiner, plain = kernel.joiner, ref.joiner
    assert list(joiner.predictions.items()) == list(plain.predictions.items())
    assert list(joiner.labels.items()) == list(plain.labels.items())
    assert list(joiner._joined_order) == list(plain.joined_ids)
    assert joiner._joined == set(plain.joined_ids)
    assert (joiner.evicted, joiner.duplicates, joiner.joined) == (
        plain.evicted,
        plain.duplicates,
        plain.joined,
    )
    assert kernel.counts == ref.counts
    assert list(kernel.history) == ref.history
    pairs = [(kernel.error, ref.error)]
    pairs += [(kernel.features[n], ref.features[n]) for n in ref.features]
    pairs += [(kernel.scales[n], ref.scales[n]) for n in ref.scales]
    assert set(kernel.features) == set(ref.features) and set(kernel.scales) == set(ref.scales)
    for fast, slow in pairs:
        assert fast.snapshot() == slow.snapshot(), fast.name
        assert fast.state() == slow.state(), fast.name
        assert (fast.reference, list(fast.recent)) == (slow.reference, list(slow.recent))
        assert fast.last == slow.last, fast.name
        if fast.detector.name == "cusum":  # numpy's cumulative sums vs one addition at a time
            for side in ("up", "down", "s0", "tested", "base_n"):
                want = getattr(slow.detector.river, side)
                assert getattr(fast.detector.river, side) == pytest.approx(want, abs=1e-9)
    assert kernel.daily is not None
    windows = {w.doc()["_id"]: w for w in [*kernel.daily.finished, *kernel.daily.features.values()]}
    windows = {key: w for key, w in windows.items() if w.count or w.missing}
    assert set(windows) == set(ref.windows)
    for key, window in windows.items():
        plain_window = ref.windows[key]
        assert (window.count, window.missing, window.hist) == (
            plain_window.count,
            plain_window.missing,
            plain_window.hist,
        ), key
        assert (window.low, window.high, window.sample) == (
            plain_window.low,
            plain_window.high,
            plain_window.sample,
        ), key
        assert window.total == pytest.approx(plain_window.total, rel=1e-9, abs=1e-9)  # sum order
        assert window.total_sq == pytest.approx(plain_window.total_sq, rel=1e-9)


CONFIGS = {
    "defaults": {},
    "small buffers, other detectors": {
        "join_max_pending": 40,
        "feature_detector": "page_hinkley",
        "scale_detector": "adwin",
        "error_detector": "ddm",
    },
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_any_batching_gives_the_per_point_signals_and_state(name):
    config = DetectorConfig(
        join_max_wait_s=60,
        feature_min_observations=100,
        error_min_observations=50,
        reference_size=300,
        window_size=600,
        confirm_patience=300,
        **CONFIGS[name],
    )
    events = stream(seed=len(name))
    alarms_seen = []
    for seed in range(4):
        cut = batches(events, random.Random(seed))
        kernel, fast = run_kernel(config, cut)
        ref, slow = run_reference(config, cut)
        assert fast.ignored == slow.ignored
        assert fast.joined == slow.joined
        assert fast.issues == slow.issues
        assert fast.alarms == slow.alarms
        assert fast.per_batch == slow.per_batch
        assert_same_state(kernel, ref)
        alarms_seen.append(len(fast.alarms))
    # the streams exercised what they should: alarms on features, scale and errors, evictions
    kinds = {alarm.kind for _, alarm, _ in fast.alarms}
    assert {"mean", "scale", "error"} <= kinds, kinds
    assert any(reason.endswith("_expired") for reason in ref.joiner.evicted)
    assert {reason for _, reason in fast.ignored} >= {
        "served_by_shadow",
        "served_by_canary",
        "not_serving_version",
    }
    assert ref.counts["pairs_ignored"] and ref.counts["duplicate_predictions"]
    assert {issue.check for _, issues in fast.issues for issue in issues} == {
        "missing",
        "non_finite",
        "out_of_range",
        "schema",
    }


def test_the_same_stream_in_batches_of_one_and_of_everything():
    """The extremes of the batching (one point per batch, whole runs) against the oracle."""
    config = DetectorConfig(join_max_wait_s=60, feature_min_observations=100, join_max_pending=12)
    events = stream(seed=11, n=1500)
    for limit in (1, 10_000):
        cut = batches(events, limit)
        kernel, fast = run_kernel(config, cut)
        ref, slow = run_reference(config, cut)
        assert (fast.ignored, fast.joined, fast.issues) == (slow.ignored, slow.joined, slow.issues)
        assert (fast.alarms, fast.per_batch) == (slow.alarms, slow.per_batch)
        assert_same_state(kernel, ref)
        assert ref.joiner.evicted["prediction_overflow"] and ref.joiner.evicted["label_overflow"]


def test_alarms_come_out_in_point_order_across_the_error_and_feature_streams():
    """One prediction batch completes pairs whose labels were waiting (error alarms early in
    the batch) and shifts a feature later in it (feature alarms later): the kernel must give
    the per-point order, not 'all feature alarms, then the error alarms'."""
    rng = random.Random(1)
    now = T0
    events: list[Event] = []

    def predictions(n: int, x_mean: float, start: int) -> list[Prediction]:
        return [
            Prediction(
                f"p{start + i}",
                1,
                "champion",
                0,
                {"x": rng.gauss(x_mean, 1.0), "y": rng.gauss(10.0, 2.0), "z": 5.0},
                str(uuid.uuid4()),
                now,
            )
            for i in range(n)
        ]

    calm = predictions(1000, 0.0, 0)
    events += calm
    events += [
        Label(p.prediction_id, int(rng.random() < 0.1), str(uuid.uuid4()), now) for p in calm
    ]
    now += timedelta(seconds=1)
    drifting = predictions(200, 0.0, 1000) + predictions(200, 2.0, 1200)
    events += [
        Label(p.prediction_id, int(rng.random() < 0.7), str(uuid.uuid4()), now) for p in drifting
    ]
    events += drifting
    runs = batches(events, len(events))
    config = DetectorConfig(error_min_observations=50, feature_min_observations=100)
    kernel, fast = run_kernel(config, runs)
    ref, slow = run_reference(config, runs)
    last_batch = {at for at, _ in runs[-1]}
    kinds = [alarm.kind for at, alarm, _ in slow.alarms if at in last_batch]
    assert kinds[0] == "error" and "mean" in kinds, kinds
    assert fast.alarms == slow.alarms
    assert_same_state(kernel, ref)
