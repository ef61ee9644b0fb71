"""The monitor's Prometheus metrics, on top of the platform's shared ones."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from modelbus_platform.metrics import Metrics


class MonitorMetrics(Metrics):
    def __init__(self, service: str = "monitor") -> None:
        super().__init__(service)
        r = self.registry
        self.joined_pairs = Counter(
            "modelbus_monitor_joined_pairs_total",
            "Predictions joined with their label",
            ["model"],
            registry=r,
        )
        self.ignored = Counter(
            "modelbus_monitor_ignored_total",
            "Predictions or pairs kept away from the detectors, by reason",
            ["model", "reason"],
            registry=r,
        )
        self.drift_alarms = Counter(
            "modelbus_monitor_drift_alarms_total",
            "Detector alarms, by detector, feature and disposition (opened or suppressed)",
            ["model", "detector", "feature", "disposition"],
            registry=r,
        )
        self.suppressed_alarms = Counter(
            "modelbus_monitor_suppressed_alarms_total",
            "Alarms that emitted nothing (incident open or cooldown)",
            ["model", "reason"],
            registry=r,
        )
        self.evicted_pending = Counter(
            "modelbus_monitor_evicted_pending_total",
            "Unmatched predictions or labels dropped from the join buffer, by reason",
            ["model", "reason"],
            registry=r,
        )
        self.quality_alerts = Counter(
            "modelbus_monitor_quality_alerts_total",
            "DataQualityAlert events emitted",
            ["model", "check"],
            registry=r,
        )
        self.incidents = Counter(
            "modelbus_monitor_incidents_total",
            "Incidents opened and closed",
            ["model", "action"],
            registry=r,
        )
        self.open_incidents = Gauge(
            "modelbus_monitor_open_incidents", "Open incidents", ["model"], registry=r
        )
        self.error_rate = Gauge(
            "modelbus_monitor_error_rate",
            "ADWIN's current error-rate estimate for the serving version",
            ["model"],
            registry=r,
        )
