"""HTTP for batch jobs: ``POST /batch-jobs`` (202 + job id), ``GET /batch-jobs``,
``GET /batch-jobs/{job_id}``. Errors are ``ErrorBody`` with a reason, like every route."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelbus_platform.http import error_payload, error_responses, json_body

from .domain import BadJob, BatchJob
from .ports import JobStoreUnavailable
from .service import BatchService


class BatchJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(min_length=1, max_length=200)
    input_uri: str = Field(
        min_length=1,
        description="object key or s3://<the service's bucket>/<key> of a .csv/.parquet, under "
        "one of batch_input_prefixes",
    )
    output_uri: str | None = Field(
        default=None,
        description="default: <input stem>.scores.<ext>; under one of batch_output_prefixes, "
        "never datasets/ or artifacts/",
    )
    version: int | None = Field(default=None, ge=1, description="default: the champion")
    job_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
        description="client-chosen id: a repeated POST with the same id starts nothing new",
    )


def _json(content: object, status: int) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def _error(reason: str, message: str, status: int) -> Response:
    return Response(
        error_payload(message, reason), status_code=status, media_type="application/json"
    )


STORE_DOWN = {503: "batch_store_unavailable: MongoDB does not answer"}


def _view(job: BatchJob) -> dict:
    return job.model_dump(mode="json")


def build_router(service: BatchService) -> APIRouter:
    router = APIRouter(tags=["batch"])

    @router.post(
        "/batch-jobs",
        status_code=202,
        summary="Start a batch scoring job",
        response_model=BatchJob,
        openapi_extra=json_body(BatchJobRequest),
        responses={
            200: {"model": BatchJob, "description": "the existing job of this job_id"},
            **error_responses(
                {
                    **STORE_DOWN,
                    422: "bad_request, unknown_format, bad_model_name; where it reads or "
                    "writes: bad_uri (not a clean relative key: absolute, '..', control "
                    "characters, ...), bad_scheme (anything but a key or s3://<bucket>/<key>), "
                    "wrong_bucket, outside_prefixes (not under batch_input_prefixes / "
                    "batch_output_prefixes), protected_prefix (an output under datasets/ or "
                    "artifacts/)",
                }
            ),
        },
    )
    async def create_job(request: Request) -> Response:
        """202 with the job (``job_id``, ``state``); 200 with the existing job if ``job_id``
        was already used."""
        try:
            body = BatchJobRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            return _error("bad_request", message, 422)
        try:
            job, created = await service.submit(
                model_name=body.model_name,
                input_uri=body.input_uri,
                output_uri=body.output_uri,
                version=body.version,
                trigger="api",
                job_id=body.job_id,
            )
        except BadJob as exc:
            return _error(exc.reason, exc.message, 422)
        except JobStoreUnavailable as exc:
            return _error("batch_store_unavailable", str(exc), 503)
        return _json(_view(job), 202 if created else 200)

    @router.get(
        "/batch-jobs",
        summary="Batch jobs, newest first",
        response_model=list[BatchJob],
        responses=error_responses(STORE_DOWN),
    )
    async def list_jobs(model_name: str | None = None, limit: int = 50) -> Response:
        try:
            jobs = await service.list(model_name, max(1, min(limit, 500)))
        except JobStoreUnavailable as exc:
            return _error("batch_store_unavailable", str(exc), 503)
        return _json([_view(job) for job in jobs], 200)

    @router.get(
        "/batch-jobs/{job_id}",
        summary="One batch job: state and progress",
        response_model=BatchJob,
        responses=error_responses({**STORE_DOWN, 404: "unknown_job"}),
    )
    async def get_job(job_id: str) -> Response:
        try:
            job = await service.get(job_id)
        except JobStoreUnavailable as exc:
            return _error("batch_store_unavailable", str(exc), 503)
        if job is None:
            return _error("unknown_job", f"no batch job {job_id!r}", 404)
        return _json(_view(job), 200)

    return router
