"""The deployer's HTTP API: its decisions (the audit trail), human approval of pending decisions,
and the effective promotion and rollout policy. Refusals are ``ErrorBody``: 404
``unknown_decision``, 409 ``not_pending``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Body, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from modelbus_contracts import DatasetRef, Decision, GateResult
from modelbus_contracts.envelope import MODEL_NAME_MAX_LENGTH, MODEL_NAME_PATTERN
from modelbus_platform.auth import audit_actor
from modelbus_platform.http import ApiError, ModelName, Version, error_responses

from .service import DecisionConflict, DeployerService

UNKNOWN = {404: "unknown_decision: no decision on this model version"}
HUMAN = {**UNKNOWN, 409: "not_pending: the decision is not (or no longer) pending approval"}


class DecisionView(BaseModel):
    """One deployer decision with every number behind it."""

    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)

    model_name: str
    version: int
    decision: Decision
    stage: int = 0
    live: str = Field(default="none", description="shadow | canary | watch | none")
    rollout: dict[str, Any] | None = None
    watch: dict[str, Any] | None = None
    history: list[dict[str, Any]] = Field(default_factory=list)
    champion_version: int | None
    reasons: list[str]
    gates: list[GateResult]
    holdout: DatasetRef
    challenger_metrics: dict[str, float] = Field(default_factory=dict)
    champion_metrics: dict[str, float] = Field(default_factory=dict)
    policy: dict[str, Any] = Field(default_factory=dict)
    policy_revision: int = Field(
        default=0, description="the revision of the model's live policy (registry) it used"
    )
    latency: dict[str, float] | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    event_id: str
    correlation_id: str
    registered_event_id: str
    decided_at: datetime
    published: bool = Field(description="the decision's event has left the outbox")


class PolicyEntry(BaseModel):
    primary_metric: str | None = Field(description="none: the task's default (metric_by_task)")
    higher_is_better: bool | None
    metric_by_task: dict[str, str] = Field(default_factory=dict)
    promotion_margin: float
    significance: float
    min_primary_metric: float
    min_holdout_rows: int
    latency_budget_ms: float
    latency_samples: int
    require_approval: bool = False
    rollout: str = "immediate"
    shadow_min_predictions: int = 0
    canary_steps: list[float] = Field(default_factory=list)
    canary_step_predictions: int = 0
    min_live_predictions: int = 0
    min_agreement: float = 0.0
    max_shadow_error_rate: float = 0.0
    max_fallback_rate: float = 0.0
    live_latency_p99_ms: float = 0.0
    min_labels: int = 0
    accuracy_tolerance: float = 0.0
    rollback_watch_predictions: int = 0


class PolicyView(BaseModel):
    default: PolicyEntry
    models: dict[str, PolicyEntry] = Field(description="effective policy of overridden models")


class HumanDecision(BaseModel):
    """Who approves or rejects a pending decision, and why (both go into the audit trail)."""

    model_config = ConfigDict(extra="forbid")

    actor: str = Field(min_length=1, max_length=200)
    reason: str = Field(min_length=1, max_length=2000)


router = APIRouter(tags=["deployer"])


def _service(request: Request) -> DeployerService:
    return request.app.state.context.decisions


@router.get("/decisions", summary="Decisions, newest first")
async def list_decisions(
    request: Request,
    model_name: str | None = Query(
        default=None, max_length=MODEL_NAME_MAX_LENGTH, pattern=MODEL_NAME_PATTERN
    ),
    limit: int = Query(default=50, ge=1, le=500),
) -> list[DecisionView]:
    docs = await _service(request).list_decisions(model_name, limit)
    return [DecisionView.model_validate(d) for d in docs]


@router.get(
    "/decisions/{model_name}/{version}",
    summary="The decision on one model version",
    responses=error_responses(UNKNOWN),
)
async def get_decision(
    request: Request,
    model_name: ModelName,
    version: Version,
) -> DecisionView:
    doc = await _service(request).get_decision(model_name, version)
    if doc is None:
        raise ApiError(404, f"no decision for {model_name} v{version}", "unknown_decision")
    return DecisionView.model_validate(doc)


@router.get("/policy", summary="Effective promotion policy: defaults and per-model overrides")
async def policy(
    request: Request,
    model_name: str | None = Query(
        default=None, max_length=MODEL_NAME_MAX_LENGTH, pattern=MODEL_NAME_PATTERN
    ),
) -> PolicyView:
    return PolicyView.model_validate(await _service(request).policies(model_name))


async def _human(request: Request, model_name: str, version: int, body: HumanDecision, verb: str):
    service = _service(request)
    call = service.approve if verb == "approve" else service.reject
    try:
        actor = audit_actor(request, body.actor)  # the identity when auth is on
        doc = await call(model_name, version, actor, body.reason)
    except LookupError as exc:
        raise ApiError(404, str(exc), "unknown_decision") from exc
    except DecisionConflict as exc:
        raise ApiError(409, exc.reason, "not_pending") from exc
    return DecisionView.model_validate(doc)


@router.post(
    "/decisions/{model_name}/{version}/approve",
    summary="Approve a pending decision: its rollout starts (or it is promoted)",
    responses=error_responses(HUMAN),
)
async def approve(
    request: Request,
    model_name: ModelName,
    version: Version,
    body: HumanDecision = Body(),
) -> DecisionView:
    return await _human(request, model_name, version, body, "approve")


@router.post(
    "/decisions/{model_name}/{version}/reject",
    summary="Reject a pending decision",
    responses=error_responses(HUMAN),
)
async def reject(
    request: Request,
    model_name: ModelName,
    version: Version,
    body: HumanDecision = Body(),
) -> DecisionView:
    return await _human(request, model_name, version, body, "reject")
