"""The human-readable model report: one server-rendered HTML page (no scripts, no external
assets) with the model's task and live numbers (accuracy for a classifier, RMSE and MAE for a
regression), an inline SVG plot of the error rate over time (a regression's: the share of
residuals above its warm-up 0.9 quantile), the drift streams per feature, the category features'
shares against the reference with their chi-square test, data quality counts, the daily
comparison and the incidents (each judged on its metric). Pure: data in, HTML string out."""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from typing import Any

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.6rem}
table{border-collapse:collapse;font-size:.85rem}td,th{border:1px solid #ccc;padding:2px 6px}
th{background:#f3f3f3}.ok{color:#1a7f37}.warn{color:#b58100}.drift,.open{color:#c62828}
.muted{color:#777}
"""


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return escape(str(value))


def error_plot(history: list[tuple[float, float, int]], width: int = 640, height: int = 180) -> str:
    """Error rate per block of joined predictions over time, as an inline SVG polyline."""
    if len(history) < 2:
        return '<p class="muted" id="error-plot">not enough joined predictions to plot yet</p>'
    pad = 30
    t0, t1 = history[0][0], history[-1][0]
    span = (t1 - t0) or 1.0
    top = max(0.05, max(r for _, r, _ in history)) * 1.1
    pts = " ".join(
        f"{pad + (t - t0) / span * (width - 2 * pad):.1f},"
        f"{height - pad - r / top * (height - 2 * pad):.1f}"
        for t, r, _ in history
    )
    start = datetime.fromtimestamp(t0, UTC).strftime("%H:%M:%S")
    end = datetime.fromtimestamp(t1, UTC).strftime("%H:%M:%S")
    return (
        f'<svg id="error-plot" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" role="img" aria-label="error rate over time">'
        f'<rect width="{width}" height="{height}" fill="#fafafa" stroke="#ddd"/>'
        f'<polyline fill="none" stroke="#c62828" stroke-width="1.5" points="{pts}"/>'
        f'<text x="{pad}" y="{height - 8}" font-size="10">{start}</text>'
        f'<text x="{width - pad}" y="{height - 8}" font-size="10" text-anchor="end">{end}</text>'
        f'<text x="4" y="{pad - 8}" font-size="10">error rate (max {top:.2f})</text>'
        "</svg>"
    )


def _table(headers: list[str], rows: list[list[str]], table_id: str) -> str:
    if not rows:
        return f'<p class="muted" id="{table_id}">none</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><tr>{head}</tr>{body}</table>'


def _streams(status: dict[str, Any]) -> str:
    rows = []
    for name, s in sorted(status.get("detectors", {}).items()):
        state = '<span class="drift">pending</span>' if s.get("pending") else "watching"
        rows.append(
            [
                escape(name),
                escape(str(s.get("kind"))),
                escape(str(s.get("detector"))),
                fmt(s.get("observations")),
                fmt(s.get("estimation")),
                fmt(s.get("raised")),
                fmt(s.get("confirmed")),
                fmt(s.get("dismissed")),
                state,
            ]
        )
    headers = ["stream", "kind", "detector", "points", "estimate", "raised", "confirmed"]
    return _table([*headers, "dismissed", "state"], rows, "drift-table")


def _daily(daily: dict[str, Any] | None) -> str:
    if not daily or not daily.get("features"):
        return '<p class="muted" id="daily-table">no daily windows yet</p>'
    rows = []
    for name, f in daily["features"].items():
        ks = f.get("ks_vs_previous") or {}
        rows.append(
            [
                escape(name),
                fmt(f["count"]),
                fmt(f.get("previous_count")),
                fmt(f.get("mean")),
                fmt(f.get("psi_vs_previous")),
                fmt(ks.get("p_value"), 4) if ks else "-",
                fmt(f.get("psi_vs_reference")),
                f'<span class="{escape(f["status"])}">{escape(f["status"])}</span>',
            ]
        )
    headers = ["feature", "count", "prev. day", "mean", "PSI vs prev.", "KS p vs prev."]
    caption = f"<p>{escape(daily['day'])} vs {escape(daily['previous_day'])}</p>"
    return caption + _table([*headers, "PSI vs ref.", "status"], rows, "daily-table")


def _performance(status: dict[str, Any]) -> str:
    numbers = status.get("performance") or {}
    cells = ", ".join(
        f'{escape(k)} <b id="live-{escape(k)}">{fmt(v)}</b>' for k, v in numbers.items()
    )
    task = escape(str(status.get("task", "binary")))
    return f'<p id="performance">task <b id="task">{task}</b>; live {cells or "-"}</p>'


def _categories(status: dict[str, Any]) -> str:
    rows = []
    for name, s in sorted(status.get("detectors", {}).items()):
        if s.get("kind") != "category":
            continue
        reference, now = s.get("reference_shares", {}), s.get("shares", {})
        shares = " ".join(
            f"{escape(c)} {fmt(reference.get(c), 2)}→{fmt(now.get(c, 0.0), 2)}"
            for c in sorted(reference.keys() | now.keys())
        )
        last = s.get("last_test") or {}
        drift = last and last.get("statistic", 0) > last.get("threshold", float("inf"))
        verdict = '<span class="drift">drift</span>' if drift else '<span class="ok">ok</span>'
        rows.append(
            [
                escape(name),
                shares,
                fmt(last.get("statistic")),
                fmt(last.get("threshold")),
                f"{last['p_value']:.2e}" if isinstance(last.get("p_value"), float) else "-",
                fmt(last.get("n")),
                fmt(s.get("confirmed")),
                verdict if last else "-",
            ]
        )
    headers = ["feature", "shares (reference→last window)", "chi²", "critical", "p-value"]
    return _table([*headers, "window", "alarms", "last test"], rows, "category-table")


def _incidents(incidents: list[dict[str, Any]]) -> str:
    rows = []
    for i in incidents:
        ev = i.get("evidence", {})
        rows.append(
            [
                escape(str(i["incident_id"])[:8]),
                f'<span class="{escape(i["status"])}">{escape(i["status"])}</span>',
                escape(str(i.get("state", "-"))),
                fmt(i.get("opened_at")),
                escape(str(ev.get("feature"))),
                escape(str(ev.get("detector"))),
                f"{ev['p_value']:.2e}" if isinstance(ev.get("p_value"), float) else "-",
                fmt(i.get("attempts")),
                escape(str(i.get("metric") or "accuracy")),
                fmt(_value(i, "baseline")),
                fmt(_value(i, "live")),
                fmt(i.get("suppressed_alarms")),
                fmt(i.get("closed_by_version")),
                escape(str((i.get("transitions") or [{}])[-1].get("reason", ""))),
            ]
        )
    headers = ["incident", "status", "state", "opened", "feature", "detector", "p-value"]
    headers += ["attempts", "metric", "pre-drift", "live", "suppressed", "closed by v", "why"]
    return _table(headers, rows, "incident-table")


def _value(incident: dict[str, Any], which: str) -> Any:
    """An incident's metric before the drift or live (an older record: its accuracy)."""
    value = incident.get(f"{which}_value")
    return incident.get(f"{which}_accuracy") if value is None else value


def render_report(
    name: str,
    status: dict[str, Any] | None,
    daily: dict[str, Any] | None,
    incidents: list[dict[str, Any]],
    now: datetime,
) -> str:
    status = status or {}
    quality = status.get("quality", {})
    quality_rows = [[escape(k), fmt(v)] for k, v in sorted(quality.items())]
    incident = status.get("open_incident")
    headline = (
        f'<p class="open" id="open-incident">open incident {escape(incident["incident_id"])} '
        f"({escape(str(incident.get('state')))}, attempt {fmt(incident.get('attempts'))}, "
        f"live {escape(str(incident.get('metric') or 'accuracy'))} "
        f"{fmt(_value(incident, 'live'))} vs pre-drift {fmt(_value(incident, 'baseline'))})</p>"
        if incident
        else '<p class="ok" id="open-incident">no open incident</p>'
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>modelbus monitor: {escape(name)}</title>
<style>{STYLE}</style></head><body>
<h1>Model <span id="model-name">{escape(name)}</span></h1>
<p>serving version <b id="serving-version">{fmt(status.get("serving_version"))}</b>,
joined predictions {fmt(status.get("joined"))}, error rate (recent window)
<b id="error-rate">{fmt(status.get("error_rate"))}</b>; generated {fmt(now)} UTC</p>
{_performance(status)}
{headline}
<h2>Error rate over time</h2>
{error_plot([tuple(h) for h in status.get("history", [])])}
<h2>Drift per feature</h2>
{_streams(status)}
<h2>Category features</h2>
{_categories(status)}
<h2>Data quality (issues since start)</h2>
{_table(["check", "count"], quality_rows, "quality-table")}
<h2>Yesterday vs today</h2>
{_daily(daily)}
<h2>Incidents</h2>
{_incidents(incidents)}
</body></html>
"""
