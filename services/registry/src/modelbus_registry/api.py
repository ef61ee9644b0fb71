"""The registry's HTTP API: models, versions, verified artifacts, aliases (compare-and-set),
rollback and the audit log. Refusals are ``ErrorBody``: 404 ``not_found``, 409 with the
conflict's action as the reason (``promotion_conflict``, ``rollback_refused``, ...); a change
answers as soon as it is stored (its event leaves through the outbox). The router holds no
state."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response

from modelbus_contracts.api import (
    Alias,
    AliasesView,
    AliasUpdate,
    AuditRecord,
    ModelView,
    RollbackRequest,
    VersionView,
)
from modelbus_platform.http import ApiError, error_responses

from .domain import Conflict, NotFound
from .service import API_ACTOR, RegistryService

ARTIFACT_MEDIA_TYPE = "application/json"


def get_service(request: Request) -> RegistryService:
    service = getattr(request.app.state, "context", None)
    if service is None:
        raise ApiError(503, "registry is starting", "starting")
    return service


Service = Annotated[RegistryService, Depends(get_service)]
Actor = Annotated[str, Header(alias="X-Actor", max_length=200)]
Limit = Annotated[int, Query(ge=1, description="most records to return (capped by settings)")]


STARTING = {503: "starting: the service is not wired yet"}
UNKNOWN = {**STARTING, 404: "not_found: no such model (or version, alias, artifact)"}
ARTIFACT = {**UNKNOWN, 409: "artifact_integrity_failed: the stored bytes do not match sha256"}
CHANGE = {
    **UNKNOWN,
    409: "the state forbids it or moved: promotion_conflict, alias_conflict, promotion_refused, "
    "rollback_refused, rollback_conflict",
}


async def _guard(call):
    try:
        return await call
    except NotFound as exc:
        raise ApiError(404, exc.reason, "not_found") from exc
    except Conflict as exc:
        raise ApiError(409, exc.reason, exc.action) from exc


def build_router(audit_limit: int = 1000) -> APIRouter:
    router = APIRouter(tags=["registry"])

    @router.get(
        "/models",
        response_model=list[ModelView],
        summary="All models",
        responses=error_responses(STARTING),
    )
    async def list_models(service: Service) -> list[ModelView]:
        return await service.list_models()

    @router.get(
        "/models/{name}",
        response_model=ModelView,
        summary="One model",
        responses=error_responses(UNKNOWN),
    )
    async def get_model(name: str, service: Service) -> ModelView:
        return await _guard(service.get_model(name))

    @router.get(
        "/models/{name}/versions",
        response_model=list[VersionView],
        summary="Versions, oldest first",
        responses=error_responses(UNKNOWN),
    )
    async def list_versions(name: str, service: Service) -> list[VersionView]:
        return await _guard(service.list_versions(name))

    @router.get(
        "/models/{name}/versions/{version}",
        response_model=VersionView,
        responses=error_responses(UNKNOWN),
    )
    async def get_version(name: str, version: int, service: Service) -> VersionView:
        return await _guard(service.get_version(name, version))

    @router.get(
        "/models/{name}/versions/{version}/artifact",
        response_class=Response,
        summary="Artifact bytes, sha256-verified (409 if the stored bytes do not match)",
        responses={
            200: {"content": {ARTIFACT_MEDIA_TYPE: {}}, "description": "the artifact"},
            **error_responses(ARTIFACT),
        },
    )
    async def get_artifact(name: str, version: int, service: Service) -> Response:
        data = await _guard(service.artifact(name, version))
        return Response(content=data, media_type=ARTIFACT_MEDIA_TYPE)

    @router.get(
        "/models/{name}/aliases",
        response_model=AliasesView,
        responses=error_responses(UNKNOWN),
    )
    async def get_aliases(name: str, service: Service) -> AliasesView:
        return await _guard(service.aliases(name))

    @router.get(
        "/models/{name}/aliases/{alias}",
        response_model=VersionView,
        summary="The version an alias points at (404 if unset)",
        responses=error_responses(UNKNOWN),
    )
    async def get_alias(name: str, alias: Alias, service: Service) -> VersionView:
        return await _guard(service.alias_target(name, alias))

    @router.put(
        "/models/{name}/aliases/{alias}",
        response_model=AliasesView,
        summary="Compare-and-set an alias (409 with the current value on conflict)",
        responses=error_responses(CHANGE),
    )
    async def set_alias(
        name: str, alias: Alias, body: AliasUpdate, service: Service, actor: Actor = API_ACTOR
    ) -> AliasesView:
        return await _guard(service.set_alias(name, alias, body, actor=actor))

    @router.post(
        "/models/{name}/rollback",
        response_model=AliasesView,
        summary="champion := previous (409 if there is none)",
        responses=error_responses(CHANGE),
    )
    async def rollback(
        name: str, body: RollbackRequest, service: Service, actor: Actor = API_ACTOR
    ) -> AliasesView:
        return await _guard(service.rollback(name, body, actor=actor))

    @router.get(
        "/models/{name}/audit",
        response_model=list[AuditRecord],
        summary="Newest first",
        responses=error_responses(STARTING),
    )
    async def model_audit(name: str, service: Service, limit: Limit = 100) -> list[AuditRecord]:
        return await service.audit(name, min(limit, audit_limit))

    @router.get(
        "/audit",
        response_model=list[AuditRecord],
        summary="Newest first",
        responses=error_responses(STARTING),
    )
    async def audit(
        service: Service, model_name: str | None = None, limit: Limit = 100
    ) -> list[AuditRecord]:
        return await service.audit(model_name, min(limit, audit_limit))

    return router
