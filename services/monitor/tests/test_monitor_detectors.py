"""The drift streams on synthetic data: configurable detectors, the variance stream, the
confirmation test, direction on 0/1 streams, and the batch path equal to the per-point path."""

from __future__ import annotations

import numpy as np
import pytest

from modelbus_monitor.config import DetectorConfig
from modelbus_monitor.detectors import (
    ERROR_STREAM,
    Stream,
    StreamConfig,
    VarianceCusum,
    change_point,
    proportion_test,
    update_columns,
)


def normal(seed: int, n: int, mean: float = 0.0, std: float = 1.0) -> list[float]:
    return (np.random.default_rng(seed).standard_normal(n) * std + mean).tolist()


def first_alarm(stream: Stream, values: list[float]) -> int | None:
    found = stream.update_many(values)
    return found[0][0] if found else None


def test_detector_per_model_and_feature():
    config = DetectorConfig(
        overrides={"churn": {"x": "kswin", "*": "page_hinkley", ERROR_STREAM: "ddm"}}
    )
    assert config.detector_for("churn", "x") == "kswin"
    assert config.detector_for("churn", "y") == "page_hinkley"
    assert config.detector_for("churn", ERROR_STREAM) == "ddm"
    assert config.detector_for("other", "x") == "adwin"
    assert config.stream("churn", "x", "mean").detector.name == "kswin"
    # the variance stream runs its own detector (not overridden per feature)
    assert config.stream("churn", "x", "scale").detector.name == "cusum"
    assert DetectorConfig(scale_detector="adwin").stream("m", "x", "scale").detector.name == "adwin"
    assert config.stream("churn", ERROR_STREAM, "error").config.direction == "up"
    with pytest.raises(ValueError):
        Stream("x", "mean", StreamConfig(detector="nope"))


@pytest.mark.parametrize("detector", ["cusum", "adwin"])
def test_variance_doubling_is_caught_by_the_scale_stream_only(detector):
    config = DetectorConfig(scale_detector=detector)
    mean, scale = config.stream("m", "x", "mean"), config.stream("m", "x", "scale")
    values = normal(1, 1500) + normal(2, 2000, std=2**0.5)
    assert first_alarm(mean, values) is None
    at = first_alarm(scale, [abs(v) for v in values])
    assert at is not None and 1500 <= at < 1500 + 2000
    assert scale.last.detector == f"{detector}-scale" and scale.last.kind == "scale"
    assert scale.last.current_value > scale.last.reference_value


def cusum_alarms(detector: VarianceCusum, values: list[float], chunk: int) -> list[int]:
    """Alarm indices, fed per point (chunk 0) or in chunks through ``first_change``."""
    if not chunk:
        found = []
        for i, v in enumerate(values):
            detector.update(v)
            if detector.drift_detected:
                found.append(i)
        return found
    found, at = [], 0
    while at < len(values):
        hit = detector.first_change(values[at : at + chunk])
        if hit is None:
            at += chunk
        else:
            found.append(at + hit)
            at += hit + 1
    return found


@pytest.mark.parametrize("factor", [0.6, 1.0, 1.5])
def test_variance_cusum_batches_equal_points(factor):
    values = [abs(v) for v in normal(11, 2500) + normal(12, 2500, std=factor)]
    one, many = VarianceCusum(), VarianceCusum()
    assert cusum_alarms(one, values, 0) == cusum_alarms(many, values, 777)
    assert (one.tested, one.base_n, one.s0) == (many.tested, many.base_n, many.s0)
    assert one.up == pytest.approx(many.up, abs=1e-9)
    assert one.down == pytest.approx(many.down, abs=1e-9)


def test_update_columns_equals_each_stream_on_its_own():
    """Quiet columns go through the 2D pass, changing ones (and pending ones) one by one."""
    rng = np.random.default_rng(16)
    stds = [1.0, 1.6, 0.5, 1.0, 2.0]  # variance changes at row 3000 in columns 1, 2 and 4
    data = np.abs(
        np.vstack([rng.standard_normal((3000, 5)), rng.standard_normal((4000, 5)) * stds])
    )
    config = DetectorConfig()
    together = [config.stream("m", f"x{j}", "scale") for j in range(5)]
    alone = [config.stream("m", f"x{j}", "scale") for j in range(5)]
    got, want = [], []
    for start in range(0, len(data), 500):
        block = data[start : start + 500]
        got += [(start + i, j, a.statistic) for i, j, a in update_columns(together, block)]
        for j, stream in enumerate(alone):
            want += [(start + i, j, a.statistic) for i, a in stream.update_many(block[:, j])]
    assert sorted(got) == sorted(want)
    assert {j for _, j, _ in got} == {1, 2, 4}
    assert [s.snapshot() for s in together] == [s.snapshot() for s in alone]
    assert [s.detector.river.up for s in together] == [s.detector.river.up for s in alone]


def test_variance_cusum_finds_doubling_and_halving_then_learns_the_new_regime():
    for std, side in ((2**0.5, "up"), (0.5**0.5, "down")):
        detector = VarianceCusum()
        values = [abs(v) for v in normal(13, 1500) + normal(14, 20_000, std=std)]
        found = cusum_alarms(detector, values, 1000)
        assert len(found) == 1 and 1500 < found[0] < 1500 + 600, (side, found)
        assert detector.estimation == pytest.approx(std**2, rel=0.2)  # re-learned after it


def test_variance_cusum_is_quiet_without_a_change_and_waits_for_its_warmup():
    detector = VarianceCusum()
    assert cusum_alarms(detector, [abs(v) for v in normal(15, 1_000_000)], 1000) == []
    fresh = VarianceCusum(warmup=500)
    assert fresh.first_change([5.0] * 499) is None and fresh.estimation is None
    assert fresh.first_change([5.0]) is None and fresh.estimation == 25.0  # clipped z^2


@pytest.mark.parametrize("detector", ["adwin", "page_hinkley", "kswin"])
def test_every_input_detector_finds_a_one_sigma_shift(detector):
    stream = DetectorConfig(feature_detector=detector).stream("m", "x", "mean")
    at = first_alarm(stream, normal(3, 1500) + normal(4, 1500, mean=1.0))
    assert at is not None and 1500 <= at < 1800
    assert stream.last.p_value < 0.001 and stream.last.statistic > stream.last.threshold


def test_confirmation_filters_page_hinkley_false_alarms():
    stream = DetectorConfig(feature_detector="page_hinkley").stream("m", "x", "mean")
    alarms = stream.update_many(normal(5, 60_000))
    assert stream.raised >= 20, "PageHinkley alone alarms often on a stationary stream"
    assert len(alarms) == stream.confirmed <= 1
    assert stream.dismissed >= 20


def test_default_stack_is_quiet_on_a_long_stationary_stream():
    config = DetectorConfig()
    mean, scale = config.stream("m", "x", "mean"), config.stream("m", "x", "scale")
    values = normal(6, 200_000)
    assert mean.update_many(values) == []
    assert scale.update_many([abs(v) for v in values]) == []


@pytest.mark.parametrize("detector", ["adwin", "ddm"])
def test_error_streams_alarm_only_when_the_error_rate_goes_up(detector):
    rng = np.random.default_rng(7)
    up = ((rng.random(6000) < np.r_[np.full(3000, 0.1), np.full(3000, 0.3)]) * 1.0).tolist()
    down = ((rng.random(6000) < np.r_[np.full(3000, 0.3), np.full(3000, 0.1)]) * 1.0).tolist()
    config = DetectorConfig(error_detector=detector)
    rising = config.stream("m", ERROR_STREAM, "error")
    at = first_alarm(rising, up)
    assert at is not None and at >= 3000
    assert rising.last.current_value > rising.last.reference_value
    falling = config.stream("m", ERROR_STREAM, "error")
    assert falling.update_many(down) == []


def test_proportion_test_is_one_sided():
    ref = np.r_[np.ones(100), np.zeros(900)]
    assert proportion_test(ref, np.r_[np.ones(60), np.zeros(140)], 0.001).rejects
    assert not proportion_test(ref, np.zeros(200), 0.001).rejects


def test_change_point_finds_the_split():
    values = (
        np.r_[np.zeros(700), np.ones(300)] + np.random.default_rng(8).standard_normal(1000) * 0.3
    )
    assert abs(change_point(values, 20) - 700) <= 5


@pytest.mark.parametrize("detector", ["adwin", "page_hinkley", "kswin"])
def test_batch_path_equals_point_path(detector):
    n = 1200 if detector == "kswin" else 3000  # KSWIN runs a KS test per point: slow
    values = normal(9, n) + normal(10, n, mean=0.4, std=1.6)
    config = DetectorConfig(feature_detector=detector)
    for kind in ("mean", "scale"):
        series = [abs(v) for v in values] if kind == "scale" else values
        one, many = config.stream("m", "x", kind), config.stream("m", "x", kind)
        per_point = [(i, a.statistic) for i, v in enumerate(series) if (a := one.update(v))]
        batched = []
        for start in range(0, len(series), 137):
            chunk = many.update_many(series[start : start + 137])
            batched += [(start + i, a.statistic) for i, a in chunk]
        assert per_point == batched and per_point
        assert one.snapshot() == many.snapshot()
