"""The scorer's Prometheus metrics: the platform's series plus the scorer's own."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge

from modelbus_platform.metrics import Metrics


class ScorerMetrics(Metrics):
    def __init__(self, service: str = "scorer") -> None:
        super().__init__(service)
        r = self.registry
        self._prediction_children: dict[tuple[str, int, str, str], Any] = {}
        self.predictions = Counter(
            "modelbus_scorer_predictions_total",
            "Predictions served, by model, version, served_by and source",
            ["model", "version", "served_by", "source"],
            registry=r,
        )
        self.load_failures = Counter(
            "modelbus_scorer_model_load_failures_total",
            "Model versions that failed to load (integrity, unreadable, missing artifact)",
            ["model"],
            registry=r,
        )
        self.fallbacks = Counter(
            "modelbus_scorer_fallbacks_total",
            "Requests answered by the warm previous model because the current one failed",
            ["model"],
            registry=r,
        )
        self.shadow_failures = Counter(
            "modelbus_scorer_shadow_failures_total",
            "Requests a shadow challenger failed on (reported as ScoringFailed served_by=shadow; "
            "the caller got the champion's answer)",
            ["model", "version"],
            registry=r,
        )
        self.rejected = Counter(
            "modelbus_scorer_rejected_requests_total",
            "Scoring requests refused, by reason",
            ["reason", "source"],
            registry=r,
        )
        self.loaded_version = Gauge(
            "modelbus_scorer_loaded_version",
            "Model version loaded in each slot (current, previous)",
            ["model", "slot"],
            registry=r,
        )
        self.swaps = Counter(
            "modelbus_scorer_model_swaps_total", "Hot swaps to a new version", ["model"], registry=r
        )
        self.syncs = Counter(
            "modelbus_scorer_syncs_total",
            "Registry syncs of one model, by outcome (loaded, unchanged, failed, no_champion)",
            ["outcome"],
            registry=r,
        )
        self.log_dropped = Counter(
            "modelbus_scorer_prediction_log_dropped_total",
            "PredictionMade events dropped because the log queue was full",
            registry=r,
        )
        self.log_errors = Counter(
            "modelbus_scorer_prediction_log_errors_total",
            "PredictionMade events that could not be published",
            registry=r,
        )
        self.log_pending = Gauge(
            "modelbus_scorer_prediction_log_pending",
            "Predictions waiting to be published",
            registry=r,
        )

    def count_predictions(
        self, model: str, version: int, served_by: str, source: str, n: int
    ) -> None:
        """``predictions`` by its labels, with the labelled child cached (the hot path)."""
        key = (model, version, served_by, source)
        child = self._prediction_children.get(key)
        if child is None:
            child = self.predictions.labels(model, str(version), served_by, source)
            self._prediction_children[key] = child
        child.inc(n)
