"""The drift streams on synthetic data: configurable detectors, the variance stream, the
confirmation test, direction on 0/1 streams, and the batch path equal to the per-point path."""

from __future__ import annotations

import numpy as np
import pytest

from modelbus_monitor.detectors import (
    ERROR_STREAM,
    Stream,
    StreamConfig,
    change_point,
    proportion_test,
)
from modelbus_monitor.domain import DetectorConfig


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
    assert config.stream("churn", "x", "scale").detector.name == "adwin"  # |z| is always ADWIN
    assert config.stream("churn", ERROR_STREAM, "error").config.direction == "up"
    with pytest.raises(ValueError):
        Stream("x", "mean", StreamConfig(detector="nope"))


def test_variance_doubling_is_caught_by_the_scale_stream_only():
    config = DetectorConfig()
    mean, scale = config.stream("m", "x", "mean"), config.stream("m", "x", "scale")
    values = normal(1, 1500) + normal(2, 2000, std=2**0.5)
    assert first_alarm(mean, values) is None
    at = first_alarm(scale, [abs(v) for v in values])
    assert at is not None and 1500 <= at < 1500 + 2000
    assert scale.last.detector == "adwin-scale" and scale.last.kind == "scale"
    assert scale.last.current_value > scale.last.reference_value


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
