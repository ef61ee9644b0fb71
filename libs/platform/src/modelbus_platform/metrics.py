"""Prometheus metrics every service exposes on ``GET /metrics``.

Each service builds one ``Metrics`` (its own registry, so tests can run many in one process).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        self.service = service
        r = self.registry
        self.events_consumed = Counter(
            "modelbus_events_consumed_total",
            "Events consumed, by outcome (ok, duplicate, dead_lettered, retried)",
            ["topic", "group", "outcome"],
            registry=r,
        )
        self.event_seconds = Histogram(
            "modelbus_event_handle_seconds",
            "Time to handle one event",
            ["topic", "group"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.events_published = Counter(
            "modelbus_events_published_total", "Events published", ["topic"], registry=r
        )
        self.dead_lettered = Counter(
            "modelbus_dead_lettered_total",
            "Messages sent to a dead-letter topic",
            ["topic"],
            registry=r,
        )
        self.dead_letters_lost = Counter(
            "modelbus_dead_letters_lost_total",
            "Messages the dead-letter topic refused even cut down: logged and skipped, so no "
            "message stalls a partition",
            ["topic"],
            registry=r,
        )
        self.events_unverified = Counter(
            "modelbus_events_unverified_total",
            "Control events dead-lettered: unsigned, unknown signer or a bad signature",
            ["topic"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "modelbus_consumer_lag", "Messages behind the log end", ["topic", "group"], registry=r
        )
        self.http = HttpMetrics(registry=r)
        self.outbox_lag = Gauge(
            "modelbus_outbox_lag_seconds",
            "Age of the oldest event waiting in the outbox (0 when everything is published)",
            registry=r,
        )
        self.outbox_failures = Counter(
            "modelbus_outbox_publish_failures_total",
            "Outbox drains that stopped on a publish failure (retried with backoff)",
            registry=r,
        )


class HttpMetrics(Collector):
    """``modelbus_http_requests_total{method,route,status}`` and
    ``modelbus_http_request_seconds{method,route}``, as a Counter and a Histogram of
    prometheus_client would expose them, but counted in plain numbers: every request passes
    here, and the library's locks and per-bucket loop cost more than the rest of the request
    metrics together. Openly optimised; its test oracle is prometheus_client itself.

    ``observe`` runs on the event loop only; a scrape from another thread reads a snapshot."""

    def __init__(
        self, registry: CollectorRegistry, buckets: tuple[float, ...] = LATENCY_BUCKETS
    ) -> None:
        self.bounds = (*buckets, float("inf"))
        self._series: dict[tuple[str, str], _HttpSeries] = {}
        registry.register(self)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        series = self._series.get((method, route))
        if series is None:
            series = self._series[(method, route)] = _HttpSeries(len(self.bounds))
        series.buckets[bisect_left(self.bounds, seconds)] += 1  # le: the first bound >= it
        series.seconds += seconds
        series.statuses[status] = series.statuses.get(status, 0) + 1

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "modelbus_http_requests", "HTTP requests", labels=["method", "route", "status"]
        )
        latency = HistogramMetricFamily(
            "modelbus_http_request_seconds", "HTTP request latency", labels=["method", "route"]
        )
        for (method, route), series in list(self._series.items()):
            for status, count in list(series.statuses.items()):
                requests.add_metric([method, route, str(status)], count)
            cumulative, buckets = 0, []
            for bound, count in zip(self.bounds, list(series.buckets), strict=True):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            latency.add_metric([method, route], buckets, series.seconds)
        yield requests
        yield latency

    def describe(self) -> Iterator[Metric]:
        return self.collect()  # the two families' names, checked against the registry's


class _HttpSeries:
    __slots__ = ("buckets", "seconds", "statuses")

    def __init__(self, size: int) -> None:
        self.buckets = [0] * size  # per bucket, not cumulative (the scrape adds them up)
        self.seconds = 0.0
        self.statuses: dict[int, int] = {}
