"""Prometheus metrics every service exposes on ``GET /metrics``.

Each service builds one ``Metrics`` (its own registry, so tests can run many in one process).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
        self.consumer_lag = Gauge(
            "modelbus_consumer_lag", "Messages behind the log end", ["topic", "group"], registry=r
        )
        self.http_requests = Counter(
            "modelbus_http_requests_total",
            "HTTP requests",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "modelbus_http_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
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
