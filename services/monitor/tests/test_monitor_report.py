"""Daily windows (yesterday vs today), data-quality checks, and the HTML report: parsed, and
rendered in a real headless Chromium when one is installed (skipped otherwise)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import httpx
import numpy as np
import pytest

from modelbus_contracts import DataQualityAlert, FeatureStats
from modelbus_embedded.testing import service_app
from modelbus_monitor.api import router
from modelbus_monitor.daily import DailyFeature, Thresholds, psi, reference_bins, status
from modelbus_monitor.quality import bounds_for, quality_issues
from modelbus_monitor.testing import MemoryDailyStore

from .test_monitor_service import Harness, prediction, send, version_view

Q = {"p01": -2.33, "p05": -1.64, "p25": -0.67, "p50": 0.0, "p75": 0.67, "p95": 1.64, "p99": 2.33}
STD_NORMAL = FeatureStats(count=5000, mean=0.0, std=1.0, min=-4.0, max=4.0, quantiles=Q)
REFERENCE = {"x": STD_NORMAL, "y": STD_NORMAL}
DAY1 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def harness(**config) -> Harness:
    h = Harness(**config)
    h.service.daily = MemoryDailyStore()
    h.registry.put(version_view("churn", 1, reference=REFERENCE), champion=True)
    h.clock.now = DAY1
    return h


async def feed(h: Harness, n: int, x_mean: float = 0.0, y_scale: float = 1.0) -> None:
    events = []
    for i in range(n):
        h.clock.now += timedelta(milliseconds=10)
        event = prediction("churn", f"p{uuid.uuid4().hex}", i % 2, x=h.rng.gauss(x_mean, 1.0))
        event.features["y"] = h.rng.gauss(0.0, y_scale)
        events.append(event)
    for start in range(0, n, 100):
        await send(h.service, *events[start : start + 100])


# -- daily windows -----------------------------------------------------------------------------


def test_reference_bins_follow_the_quantiles():
    edges, shares = reference_bins(STD_NORMAL)
    assert edges == sorted(Q.values())
    assert shares == pytest.approx([0.01, 0.04, 0.20, 0.25, 0.25, 0.20, 0.04, 0.01])
    no_quantiles = FeatureStats(count=10, mean=5.0, std=2.0, min=0.0, max=10.0)
    edges, _ = reference_bins(no_quantiles)
    assert edges[3] == 5.0 and edges[4] == pytest.approx(5.0 + 0.674 * 2)


def test_psi_thresholds_like_evidently():
    t = Thresholds()
    expected = [0.25, 0.25, 0.25, 0.25]
    assert psi([250, 250, 250, 250], expected) == pytest.approx(0.0)
    assert status(psi([300, 250, 250, 200], expected), t) == "ok"
    assert status(psi([400, 250, 200, 150], expected), t) == "warn"
    assert status(psi([700, 200, 50, 50], expected), t) == "drift"
    assert status(None, t) == "no_data"


async def test_yesterday_vs_today_flags_the_shifted_feature_only():
    h = harness()
    await feed(h, 3000)
    h.clock.now = DAY1 + timedelta(days=1)
    await feed(h, 3000, x_mean=1.0)
    today = await h.service.daily_report("churn")
    assert (today["day"], today["previous_day"]) == ("2026-03-02", "2026-03-01")
    x, y = today["features"]["x"], today["features"]["y"]
    assert (x["count"], x["previous_count"]) == (3000, 3000)
    assert x["psi_vs_previous"] > 0.25 and x["status"] == "drift"
    assert x["ks_vs_previous"]["p_value"] < 1e-6 and x["ks_rejects_vs_previous"]
    assert x["ks_vs_reference"]["p_value"] < 1e-6
    assert y["psi_vs_previous"] < 0.1 and y["psi_vs_reference"] < 0.1 and y["status"] == "ok"
    assert today["drifted"] == ["x"]
    yesterday = await h.service.daily_report("churn", "2026-03-01")
    assert yesterday["features"]["x"]["psi_vs_previous"] is None
    assert yesterday["features"]["x"]["psi_vs_reference"] < 0.1
    assert await h.service.daily.day("churn", "2026-03-01") == []  # a report does not write
    await h.service.checkpoint()  # the checkpoint saves the daily windows with the detectors
    stored = await h.service.daily.day("churn", "2026-03-01")
    assert {d["feature"] for d in stored} == {"x", "y"}
    assert all(d["_id"].startswith("churn|2026-03-01|") for d in stored)


async def test_daily_windows_survive_a_restart():
    h = harness()
    await feed(h, 500)
    await h.service.checkpoint()
    restarted = h.build(h.service.config)
    restarted.daily = h.service.daily
    await restarted.rebuild()
    h.service = restarted
    await feed(h, 200)
    report = await restarted.daily_report("churn")
    assert report["features"]["x"]["count"] == 700


def test_daily_feature_roundtrips_through_its_document():
    edges, shares = reference_bins(STD_NORMAL)
    window = DailyFeature("m", "2026-03-01", "x", edges, shares, list(range(len(edges))))
    window.add_many(np.array([0.1, -3.0, 5.0, np.nan, np.inf]))
    doc = window.doc()
    again = DailyFeature.from_doc(doc)
    assert (again.count, again.missing, again.hist) == (3, 2, window.hist)
    assert sum(again.hist) == 3 and again.hist[0] == 1 and again.hist[-1] == 1


async def test_daily_api_validates_the_day_and_404s_unknown_models():
    h = harness()
    await feed(h, 300)
    app = service_app(router, context=h.service)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        ok = await c.get("/models/churn/daily", params={"day": "2026-03-01"})
        assert ok.status_code == 200 and ok.json()["features"]["x"]["count"] == 300
        bad = await c.get("/models/churn/daily", params={"day": "01/03/2026"})
        assert bad.status_code == 422 and "YYYY-MM-DD" in bad.json()["error"]
        assert bad.json()["reason"] == "bad_day"
        assert (await c.get("/models/nobody/daily")).status_code == 404
        assert (await c.get("/models/nobody/report")).status_code == 404


# -- data quality ------------------------------------------------------------------------------


def test_quality_flags_schema_violations_and_robust_outliers():
    bounds = bounds_for(REFERENCE)
    issues = quality_issues({"x": "7", "y": 0.0, "z": 1.0}, bounds)
    assert {(i.check, i.feature) for i in issues} == {("schema", "x"), ("schema", "z")}
    # 3.6 is inside [min - 3 std, max + 3 std] = [-7, 7] but 7.2 robust z-scores from the median
    [outlier] = quality_issues({"x": 3.6, "y": 0.0}, bounds, outlier_z=3.5)
    assert (outlier.check, outlier.feature) == ("outlier", "x")
    assert outlier.high == pytest.approx(3.5 * 1.34 / 1.349)
    assert quality_issues({"x": 3.6, "y": 0.0}, bounds, outlier_z=6.0) == []


async def test_quality_alert_counts_every_check_with_examples():
    h = harness(outlier_z=3.5, cooldown_s=0)
    await feed(h, 50)
    bad = prediction("churn", "bad-1", 1, x=3.6)  # an outlier; y is missing
    await send(h.service, bad)
    [alert] = h.publisher.of(DataQualityAlert)
    assert alert.count == 2 and "missing=1" in alert.detail and "outlier=1" in alert.detail
    assert {e["check"] for e in alert.examples} == {"missing", "outlier"}
    assert all(e["prediction_id"] == "bad-1" for e in alert.examples)
    assert "predictions checked: 51" in alert.detail
    assert h.service.status("churn")["quality"] == {"missing": 1, "outlier": 1}


# -- HTML report -------------------------------------------------------------------------------


class Outline(HTMLParser):
    """Collects element ids, the text under each id'd element and svg polylines."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: dict[str, str] = {}
        self.stack: list[str | None] = []
        self.polylines = 0
        self.rows: dict[str, int] = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.stack.append(attrs.get("id"))
        if attrs.get("id"):
            self.ids.setdefault(attrs["id"], "")
        if tag == "polyline" and len((attrs.get("points") or "").split()) > 10:
            self.polylines += 1
        if tag == "tr":
            table = next((i for i in reversed(self.stack) if i), None)
            if table:
                self.rows[table] = self.rows.get(table, 0) + 1

    def handle_endtag(self, tag):
        if self.stack:
            self.stack.pop()

    def handle_data(self, data):
        for element in self.stack:
            if element:
                self.ids[element] += data


async def report_html() -> tuple[Harness, str]:
    h = harness(feature_min_observations=100)
    await h.service.rebuild()
    await feed(h, 1500)
    await h.stream("churn", 1200, 0.1)  # no y: counted as missing by the quality checks
    await feed(h, 800, x_mean=1.5)
    app = service_app(router, context=h.service)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        response = await c.get("/models/churn/report")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    return h, response.text


async def test_report_shows_error_plot_drift_quality_daily_and_incidents():
    h, html = await report_html()
    page = Outline()
    page.feed(html)
    assert page.ids["model-name"] == "churn"
    assert page.ids["serving-version"] == "1"
    assert "open incident" in page.ids["open-incident"]
    assert page.polylines == 1, "the error-rate plot"
    assert page.rows["drift-table"] == 1 + 5  # header + error, x, x:scale, y, y:scale
    assert "__error__" in page.ids["drift-table"] and "x:scale" in page.ids["drift-table"]
    assert "missing" in page.ids["quality-table"]
    assert page.rows["daily-table"] == 3 and "drift" in page.ids["daily-table"]
    assert page.rows["incident-table"] == 2 and "open" in page.ids["incident-table"]
    incident = h.service.models["churn"].incident
    assert incident is not None and incident.incident_id[:8] in page.ids["incident-table"]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# CI sets it (``make browser`` installs Debian's chromium): there, no browser is a failure
BROWSER_REQUIRED = os.environ.get("MODELBUS_REQUIRE_BROWSER") == "1"


@pytest.mark.skipif(CHROMIUM is None and not BROWSER_REQUIRED, reason="chromium is not installed")
async def test_report_renders_in_headless_chromium(tmp_path: Path):
    assert CHROMIUM is not None, "chromium is required here: `make browser` installs it"
    _, html = await report_html()
    page = tmp_path / "report.html"
    page.write_text(html, encoding="utf-8")
    shot = tmp_path / "report.png"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = await asyncio.to_thread(
        subprocess.run,
        [CHROMIUM, *flags, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'id="error-plot"' in dom.stdout and "<polyline" in dom.stdout
    assert 'id="incident-table"' in dom.stdout
    await asyncio.to_thread(
        subprocess.run,
        [CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1000,1400", page.as_uri()],
        capture_output=True,
        timeout=60,
        check=True,
    )
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
