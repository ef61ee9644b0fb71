"""The monitor's HTTP API: per-model status, daily windows, the HTML report and the incident
log. Refusals are ``ErrorBody``: 404 ``not_monitored`` / ``unknown_incident``, 422 ``bad_day``."""

from __future__ import annotations

from datetime import date
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from modelbus_platform.auth import audit_actor
from modelbus_platform.http import ApiError, error_responses

from .adapters import incident_view
from .report import render_report
from .service import MonitorService

router = APIRouter(tags=["monitor"])
NOT_MONITORED = {404: "not_monitored: no event of this model seen"}


def _service(request: Request) -> MonitorService:
    return request.app.state.context


@router.get(
    "/models/{name}/status",
    summary="Serving version, detectors and open incident",
    responses=error_responses(NOT_MONITORED),
)
async def model_status(name: str, request: Request) -> dict[str, Any]:
    status = _service(request).status(name)
    if status is None:
        raise ApiError(404, f"model {name!r} is not monitored (no events seen)", "not_monitored")
    return status


@router.get("/incidents", summary="Incidents, newest first")
async def list_incidents(
    request: Request,
    model_name: str | None = Query(default=None, max_length=200),
    limit: int = Query(default=50, ge=1, le=500),
) -> list[dict[str, Any]]:
    incidents = await _service(request).list_incidents(model_name, limit)
    return [incident_view(i) for i in incidents]


class Resolution(BaseModel):
    """Who closes an incident by hand, and why (both go into its transitions and event)."""

    model_config = ConfigDict(extra="forbid")

    actor: str = Field(min_length=1, max_length=200)
    reason: str = Field(min_length=1, max_length=2000)


@router.post(
    "/incidents/{incident_id}/resolve",
    summary="Close an open incident by hand (e.g. one that needs a human)",
    responses=error_responses(
        {404: "unknown_incident", 409: "incident_not_open: closed already, or not open here"}
    ),
)
async def resolve_incident(incident_id: str, body: Resolution, request: Request) -> dict[str, Any]:
    try:
        actor = audit_actor(request, body.actor)  # the identity when auth is on
        incident = await _service(request).resolve_incident(incident_id, actor, body.reason)
    except LookupError as exc:
        raise ApiError(404, f"incident {incident_id!r} not found", "unknown_incident") from exc
    except ValueError as exc:
        raise ApiError(409, str(exc), "incident_not_open") from exc
    return incident_view(incident)


@router.get(
    "/incidents/{incident_id}",
    summary="One incident with its evidence",
    responses=error_responses({404: "unknown_incident"}),
)
async def get_incident(incident_id: str, request: Request) -> dict[str, Any]:
    incident = await _service(request).get_incident(incident_id)
    if incident is None:
        raise ApiError(404, f"incident {incident_id!r} not found", "unknown_incident")
    return incident_view(incident)


@router.get(
    "/models/{name}/daily",
    summary="Yesterday vs today per feature (PSI, KS)",
    responses=error_responses({**NOT_MONITORED, 422: "bad_day: not YYYY-MM-DD"}),
)
async def model_daily(
    name: str,
    request: Request,
    day: str | None = Query(default=None, description="YYYY-MM-DD (UTC); default today"),
) -> dict[str, Any]:
    if day is not None:
        try:
            day = date.fromisoformat(day).isoformat()
        except ValueError:
            raise ApiError(422, f"day must be YYYY-MM-DD, got {day!r}", "bad_day") from None
    service = _service(request)
    report = await service.daily_report(name, day)
    if not report["features"] and service.status(name) is None:
        raise ApiError(404, f"model {name!r} is not monitored (no events seen)", "not_monitored")
    return report


@router.get(
    "/models/{name}/report",
    summary="Human-readable HTML report",
    response_class=HTMLResponse,
    responses=error_responses(NOT_MONITORED),
)
async def model_report(name: str, request: Request) -> HTMLResponse:
    service = _service(request)
    status = service.status(name)
    incidents = [incident_view(i) for i in await service.list_incidents(name, 20)]
    if status is None and not incidents:
        raise ApiError(404, f"model {name!r} is not monitored (no events seen)", "not_monitored")
    if status is not None:
        status["history"] = service.history(name)
    daily = await service.daily_report(name)
    html = render_report(name, status, daily, incidents, service.clock())
    return HTMLResponse(html)
