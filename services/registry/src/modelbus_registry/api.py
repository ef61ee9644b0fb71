"""The registry's HTTP API: models, versions, verified artifacts, aliases (compare-and-set),
rollback and the audit log. Refusals are ``ErrorBody``: 404 ``not_found``, 409 with the
conflict's action as the reason (``promotion_conflict``, ``rollback_refused``, ...); a change
answers as soon as it is stored (its event leaves through the outbox). The router holds no
state."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from modelbus_contracts.api import (
    Alias,
    AliasesView,
    AliasUpdate,
    AuditRecord,
    ModelView,
    RollbackRequest,
    VersionView,
)
from modelbus_contracts.events import Signature, Task
from modelbus_contracts.policy import PolicyUpdate, PolicyView
from modelbus_ml.flavors import LOGREG_FORMAT
from modelbus_platform.auth import audit_actor
from modelbus_platform.http import ApiError, ModelName, Version, error_responses

from .domain import ArtifactRejected, Conflict, NotFound, PolicyRejected
from .service import API_ACTOR, RegistryService

ARTIFACT_MEDIA_TYPE = "application/json"
BINARY = "application/octet-stream"
IMPORT_UPLOADS = r"/models/[^/]+/versions"  # up to max_upload_bytes, not max_body_bytes
ONNX_TYPES = ("application/octet-stream", "application/onnx", "application/x-onnx")
MLFLOW_TYPES = ("application/zip", "application/x-zip-compressed")
ONNX_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            t: {"schema": {"type": "string", "format": "binary"}}
            for t in (*ONNX_TYPES, *MLFLOW_TYPES)
        },
        "description": "an ONNX model: one float input (n, features), or one input (n, 1) per "
        "feature named as the feature (float: a number, string: a category); a classifier has "
        "one float output (n, classes) with the class probabilities (skl2onnx: "
        "options={'zipmap': False}), a regressor one float output (n, 1). Or a zipped MLflow "
        "model folder with an 'onnx' flavor (application/zip): its column signature names the "
        "features (a 'string' column is a category, 'required': false makes it nullable)",
    }
}


def get_service(request: Request) -> RegistryService:
    service = getattr(request.app.state, "context", None)
    if service is None:
        raise ApiError(503, "registry is starting", "starting")
    return service


Service = Annotated[RegistryService, Depends(get_service)]
# who an audit record names when auth is off: not empty, not only spaces, no control characters
ClaimedActor = Annotated[
    str,
    Header(
        alias="X-Actor",
        min_length=1,
        max_length=200,
        pattern=r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$",
    ),
]


def request_actor(request: Request, claimed: ClaimedActor = API_ACTOR) -> str:
    """The audit actor: the caller's identity when auth is on (``X-Actor`` claims anything),
    ``X-Actor`` (or ``registry-api``) when it is off."""
    return audit_actor(request, claimed)


Actor = Annotated[str, Depends(request_actor)]
# The import's query parameters are bounded by what fits in a URL: the HTTP server (httptools)
# refuses one of 64 KiB or more with a plain-text 400 before any route sees it, so the bounds
# these had (a 100_000-character signature, 10_000 feature names or classes) documented requests
# no one can send. Each bound leaves room for the others' usual values.
SIGNATURE_MAX_CHARS = 30_000
NAMES_MAX_ITEMS = 2_000  # "&feature_names=" is 15 characters before the name itself
Limit = Annotated[int, Query(ge=1, description="most records to return (capped by settings)")]


STARTING = {503: "starting: the service is not wired yet"}
UNKNOWN = {**STARTING, 404: "not_found: no such model (or version, alias, artifact)"}
ARTIFACT = {**UNKNOWN, 409: "artifact_integrity_failed: the stored bytes do not match sha256"}
IMPORT = {
    **STARTING,
    409: "artifact_conflict: the store holds other bytes under this artifact's sha256 key",
    415: "unsupported_media_type: not an ONNX body or a zipped MLflow model",
    422: "import_rejected: not a usable ONNX model, features or a signature that do not match "
    "it, a task other than the champion's, no hold-out for a first model, a bad hold-out, ...; "
    "validation_error: a signature that is not a Signature",
}
CHANGE = {
    **UNKNOWN,
    409: "the state forbids it or moved: promotion_conflict, alias_conflict, promotion_refused, "
    "rollback_refused, rollback_conflict; artifact_unverified: the new champion's artifact "
    "fails verification (signature, pickle policy, stored bytes)",
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

    @router.post(
        "/models/{name}/versions",
        response_model=VersionView,
        status_code=201,
        summary="Register a model trained elsewhere (ONNX); the deployer judges it as any other",
        description="The model is described by `signature` (a JSON `Signature`: its features "
        "in input order with kind, nullable and categories, its task and classes), or by "
        "`feature_names` with an optional `task` and `classes`. What is not given is read from "
        "the model (kinds from its inputs, task from its outputs, classes '0'..'k-1') and from "
        "the hold-out it is judged on (nullable, categories seen). The version records the "
        "resulting signature; the scorer enforces it.",
        openapi_extra=ONNX_BODY,
        responses=error_responses(
            {**IMPORT, 200: "these very bytes were imported before: that version"}
        ),
    )
    async def import_version(
        name: ModelName,
        request: Request,
        service: Service,
        actor: Actor,
        feature_names: Annotated[
            list[str] | None,
            Query(
                max_length=NAMES_MAX_ITEMS,
                description="the input's columns, in order (an MLflow model's signature may "
                "give them)",
            ),
        ] = None,
        signature: Annotated[
            str | None,
            Query(
                max_length=SIGNATURE_MAX_CHARS,
                description='JSON Signature, e.g. {"features": [{"name": "age"}, {"name": '
                '"city", "kind": "category", "nullable": true}], "task": "multiclass", '
                '"classes": ["low", "mid", "high"]}; an unset task or classes are read from '
                "the model (the server refuses a URL of 64 KiB or more with a 400)",
            ),
        ] = None,
        task: Annotated[
            Task | None,
            Query(description="binary, multiclass or regression; default: from the model"),
        ] = None,
        classes: Annotated[
            list[str] | None,
            Query(
                max_length=NAMES_MAX_ITEMS,
                description="multiclass: the classes in the order of the model's "
                "probabilities (default '0'..'k-1')",
            ),
        ] = None,
        threshold: Annotated[float, Query(ge=0, le=1, description="P(1) >= threshold: 1")] = 0.5,
        holdout_uri: Annotated[
            str | None,
            Query(
                max_length=1000,
                description="a labelled CSV in the object store to judge it on (the trainer's "
                "PUT /datasets/{name} answers its uri); default: the champion's hold-out",
            ),
        ] = None,
        source: Annotated[str, Query(max_length=200, description="where it comes from")] = "",
    ) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in (*ONNX_TYPES, *MLFLOW_TYPES):
            raise ApiError(
                415,
                f"expected an ONNX body or a zipped MLflow model, got {content_type or 'nothing'}",
                "unsupported_media_type",
            )
        try:
            described = Signature.model_validate_json(signature) if signature else None
        except ValidationError as exc:
            errors = [{**e, "loc": ("query", "signature", *e["loc"])} for e in exc.errors()]
            raise ApiError.invalid(errors) from exc
        options = {
            "signature": described,
            "task": task,
            "classes": classes,
            "threshold": threshold,
            "holdout_uri": holdout_uri,
            "source": source,
            "actor": actor,
        }
        body = await request.body()
        try:
            if content_type in MLFLOW_TYPES:
                view, created = await service.import_mlflow(
                    name, body, feature_names=feature_names, **options
                )
            else:
                view, created = await service.import_model(
                    name, body, feature_names=feature_names, **options
                )
        except ArtifactRejected as exc:
            raise ApiError(422, exc.reason, "import_rejected") from exc
        except Conflict as exc:
            raise ApiError(409, exc.reason, exc.action) from exc
        return JSONResponse(view.model_dump(mode="json"), status_code=201 if created else 200)

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
    async def get_version(name: str, version: Version, service: Service) -> VersionView:
        return await _guard(service.get_version(name, version))

    @router.get(
        "/models/{name}/versions/{version}/artifact",
        response_class=Response,
        summary="Artifact bytes, sha256-verified (409 if the stored bytes do not match)",
        responses={
            200: {
                "content": {ARTIFACT_MEDIA_TYPE: {}, BINARY: {}},
                "description": "the artifact (JSON for logreg, else bytes)",
            },
            **error_responses(ARTIFACT),
        },
    )
    async def get_artifact(name: str, version: Version, service: Service) -> Response:
        view = await _guard(service.get_version(name, version))
        data = await _guard(service.artifact(name, version))
        json_artifact = view.artifact.format == LOGREG_FORMAT
        return Response(data, media_type=ARTIFACT_MEDIA_TYPE if json_artifact else BINARY)

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
        name: str, alias: Alias, body: AliasUpdate, service: Service, actor: Actor
    ) -> AliasesView:
        return await _guard(service.set_alias(name, alias, body, actor=actor))

    @router.post(
        "/models/{name}/rollback",
        response_model=AliasesView,
        summary="champion := previous (409 if there is none)",
        responses=error_responses(CHANGE),
    )
    async def rollback(
        name: str, body: RollbackRequest, service: Service, actor: Actor
    ) -> AliasesView:
        return await _guard(service.rollback(name, body, actor=actor))

    @router.get(
        "/models/{name}/policy",
        response_model=PolicyView,
        summary="The model's policy, newest revision (revision 0: none set, defaults apply)",
        responses=error_responses(STARTING),
    )
    async def get_policy(name: ModelName, service: Service) -> PolicyView:
        return await service.policy(name)

    @router.put(
        "/models/{name}/policy",
        response_model=PolicyView,
        summary="Set the model's policy (compare-and-set on the revision): the trainer, the "
        "deployer and the monitor apply it without a restart",
        responses=error_responses(
            {
                **STARTING,
                409: "policy_conflict: expected_revision is not the newest",
                422: "validation_error / bad_policy: a field the schema or the service refuses",
            }
        ),
    )
    async def put_policy(
        name: ModelName, body: PolicyUpdate, service: Service, actor: Actor
    ) -> PolicyView:
        try:
            return await _guard(service.put_policy(name, body, actor=actor))
        except PolicyRejected as exc:
            raise ApiError(422, exc.reason, "bad_policy") from exc

    @router.get(
        "/policies",
        response_model=list[PolicyView],
        summary="The newest policy revision of every model that has one",
        responses=error_responses(STARTING),
    )
    async def all_policies(service: Service) -> list[PolicyView]:
        return await service.all_policies()

    @router.get(
        "/models/{name}/policy/revisions",
        response_model=list[PolicyView],
        summary="Every revision of the model's policy, newest first",
        responses=error_responses(STARTING),
    )
    async def policy_revisions(
        name: ModelName, service: Service, limit: Limit = 100
    ) -> list[PolicyView]:
        return await service.policy_revisions(name, min(limit, audit_limit))

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
