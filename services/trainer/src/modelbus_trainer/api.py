"""The trainer's HTTP API: request training, upload datasets, inspect runs and feedback.
Refusals are ``ErrorBody`` with a reason (``bad_dataset``, ``unknown_run``, ...)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from pydantic import BaseModel, Field, ValidationError

from modelbus_contracts.events import FiniteJSON, Signature, Task
from modelbus_ml import DatasetError
from modelbus_platform.http import ApiError, ModelName, error_responses
from modelbus_platform.stores import ObjectConflict

from .reproduce import ReproduceFailed
from .service import TrainerService

CSV_TYPES = ("text/csv", "application/csv", "text/plain")
CSV_BODY = {
    "requestBody": {
        "required": True,
        "content": {t: {"schema": {"type": "string"}} for t in CSV_TYPES},
        "description": "CSV with a header row, feature columns (a column whose every non-empty "
        "cell is a number is a number, else a category; an empty cell is a missing value) and a "
        "label column (0/1, classes or values)",
    }
}
UNKNOWN_RUN = {404: "unknown_run"}
DATASET_UPLOADS = r"/datasets/[^/]+"  # up to max_upload_bytes, not max_body_bytes

router = APIRouter(tags=["trainer"])


class TrainRequest(BaseModel):
    dataset_uri: str | None = Field(default=None, description="CSV key in object storage")
    params: FiniteJSON = Field(default_factory=dict, description="over the default params")
    seed: int | None = Field(
        default=None, ge=0, le=2**53, description="default: the trainer's default_seed"
    )


class TrainAccepted(BaseModel):
    event_id: str = Field(description="the TrainingRequested (a duplicate's: the existing run's)")
    correlation_id: str
    run_id: str
    duplicate: bool = Field(
        default=False,
        description="true: the same model, data, params and seed as a run made within "
        "train_dedupe_window_s that is pending, running or succeeded; that run is the answer "
        "and nothing was published",
    )


class DatasetStored(BaseModel):
    uri: str
    sha256: str
    rows: int
    feature_names: list[str]
    signature: Signature = Field(description="the data's features (kinds, nullable), task")


class FeedbackCount(BaseModel):
    model_name: str
    complete: int = Field(description="predictions with features and a label")
    total: int


def _service(request: Request) -> TrainerService:
    return request.app.state.context


@router.post(
    "/models/{name}/train",
    status_code=202,
    response_model=TrainAccepted,
    summary="Publish a TrainingRequested for this model (unless an identical run is recent)",
    responses={
        200: {
            "model": TrainAccepted,
            "description": "duplicate: the identical run made within the dedupe window",
        },
        **error_responses({422: "validation_error: a bad name, body or params"}),
    },
)
async def train(
    name: ModelName, body: TrainRequest, request: Request, response: Response
) -> TrainAccepted:
    """202 with the run the request makes; 200 with the existing run (``duplicate``) when the
    same model, data, params and seed were asked for within ``train_dedupe_window_s``."""
    try:
        accepted = await _service(request).request_training(
            name, dataset_uri=body.dataset_uri, params=body.params, seed=body.seed
        )
    except ValidationError as exc:
        raise ApiError.invalid(exc.errors()) from exc
    if accepted.duplicate:
        response.status_code = 200
    return TrainAccepted(**asdict(accepted))


@router.put(
    "/datasets/{name}",
    response_model=DatasetStored,
    summary="Validate a labelled CSV and store it content-addressed",
    openapi_extra=CSV_BODY,
    responses=error_responses(
        {
            409: "dataset_conflict: the store holds other bytes under this content address",
            415: "unsupported_media_type: not a CSV content type",
            422: "bad_dataset: no label column, labels that do not fit the task, no rows, ...",
        }
    ),
)
async def put_dataset(
    name: ModelName,
    request: Request,
    task: Annotated[
        Task | None,
        Query(description="binary, multiclass or regression; default: inferred from the labels"),
    ] = None,
) -> DatasetStored:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in CSV_TYPES:
        message = f"expected text/csv, got {content_type or 'nothing'}"
        raise ApiError(415, message, "unsupported_media_type")
    try:
        stored = await _service(request).put_dataset(name, await request.body(), task)
    except DatasetError as exc:
        raise ApiError(422, f"bad dataset: {exc}", "bad_dataset") from exc
    except ObjectConflict as exc:
        raise ApiError(409, str(exc), "dataset_conflict") from exc
    return DatasetStored(**stored)


@router.get("/runs", summary="Training runs, newest first")
async def list_runs(
    request: Request,
    model_name: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[dict[str, Any]]:
    return jsonable_encoder(await _service(request).list_runs(model_name, limit))


@router.get("/runs/{run_id}", summary="One training run", responses=error_responses(UNKNOWN_RUN))
async def get_run(run_id: str, request: Request) -> dict[str, Any]:
    run = await _service(request).get_run(run_id)
    if run is None:
        raise ApiError(404, f"no run {run_id}", "unknown_run")
    return jsonable_encoder(run)


@router.post(
    "/runs/{run_id}/reproduce",
    summary="Redo a succeeded run from its lineage; report whether the sha256 matched",
    responses=error_responses(
        {**UNKNOWN_RUN, 409: "not_reproducible: the run did not succeed, or its inputs are gone"}
    ),
)
async def reproduce_run(run_id: str, request: Request) -> dict[str, Any]:
    try:
        outcome = await _service(request).reproduce(run_id)
    except ReproduceFailed as exc:
        raise ApiError(409, f"cannot reproduce: {exc}", "not_reproducible") from exc
    if outcome is None:
        raise ApiError(404, f"no run {run_id}", "unknown_run")
    return outcome


@router.get(
    "/models/{name}/feedback/count",
    response_model=FeedbackCount,
    summary="How much joined feedback the trainer holds for this model",
)
async def feedback_count(name: ModelName, request: Request) -> FeedbackCount:
    return FeedbackCount(**await _service(request).feedback_count(name))
