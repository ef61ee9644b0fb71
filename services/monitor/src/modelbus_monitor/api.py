"""The monitor's HTTP API: per-model status and the incident log."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request

from .adapters import incident_view
from .service import MonitorService

router = APIRouter(tags=["monitor"])


def _service(request: Request) -> MonitorService:
    return request.app.state.service


@router.get("/models/{name}/status", summary="Serving version, detectors and open incident")
async def model_status(name: str, request: Request) -> dict[str, Any]:
    status = _service(request).status(name)
    if status is None:
        raise HTTPException(404, detail=f"model {name!r} is not monitored (no events seen)")
    return status


@router.get("/incidents", summary="Incidents, newest first")
async def list_incidents(
    request: Request,
    model_name: str | None = Query(default=None, max_length=200),
    limit: int = Query(default=50, ge=1, le=500),
) -> list[dict[str, Any]]:
    incidents = await _service(request).list_incidents(model_name, limit)
    return [incident_view(i) for i in incidents]


@router.get("/incidents/{incident_id}", summary="One incident with its evidence")
async def get_incident(incident_id: str, request: Request) -> dict[str, Any]:
    incident = await _service(request).get_incident(incident_id)
    if incident is None:
        raise HTTPException(404, detail=f"incident {incident_id!r} not found")
    return incident_view(incident)
