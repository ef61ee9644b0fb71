"""The trainer's HTTP API: request training, upload datasets, inspect runs and feedback."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from pydantic import BaseModel, Field, ValidationError

from modelbus_contracts.envelope import MODEL_NAME_MAX_LENGTH, MODEL_NAME_PATTERN
from modelbus_contracts.events import FiniteJSON
from modelbus_ml import DatasetError

from .domain import run_id_for
from .reproduce import ReproduceFailed
from .service import TrainerService

ModelName = Annotated[
    str, Path(min_length=1, max_length=MODEL_NAME_MAX_LENGTH, pattern=MODEL_NAME_PATTERN)
]
CSV_TYPES = ("text/csv", "application/csv", "text/plain")

router = APIRouter(tags=["trainer"])


class TrainRequest(BaseModel):
    dataset_uri: str | None = Field(default=None, description="CSV key in object storage")
    params: FiniteJSON = Field(default_factory=dict, description="over the default params")
    seed: int | None = Field(default=None, description="default: the trainer's default_seed")


class TrainAccepted(BaseModel):
    event_id: str
    correlation_id: str
    run_id: str


class DatasetStored(BaseModel):
    uri: str
    sha256: str
    rows: int
    feature_names: list[str]


class FeedbackCount(BaseModel):
    model_name: str
    complete: int = Field(description="predictions with features and a label")
    total: int


def _service(request: Request) -> TrainerService:
    return request.app.state.service


@router.post(
    "/models/{name}/train",
    status_code=202,
    response_model=TrainAccepted,
    summary="Publish a TrainingRequested for this model",
)
async def train(name: ModelName, body: TrainRequest, request: Request) -> TrainAccepted:
    try:
        event = await _service(request).request_training(
            name, dataset_uri=body.dataset_uri, params=body.params, seed=body.seed
        )
    except ValidationError as exc:
        raise HTTPException(422, detail=str(exc)) from exc
    return TrainAccepted(
        event_id=str(event.event_id),
        correlation_id=str(event.correlation_id),
        run_id=run_id_for(event.event_id),
    )


@router.put(
    "/datasets/{name}",
    response_model=DatasetStored,
    summary="Validate a labelled CSV and store it content-addressed",
)
async def put_dataset(name: ModelName, request: Request) -> DatasetStored:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in CSV_TYPES:
        raise HTTPException(415, detail=f"expected text/csv, got {content_type or 'nothing'}")
    try:
        stored = await _service(request).put_dataset(name, await request.body())
    except DatasetError as exc:
        raise HTTPException(422, detail=f"bad dataset: {exc}") from exc
    return DatasetStored(**stored)


@router.get("/runs", summary="Training runs, newest first")
async def list_runs(
    request: Request,
    model_name: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[dict[str, Any]]:
    return jsonable_encoder(await _service(request).list_runs(model_name, limit))


@router.get("/runs/{run_id}", summary="One training run")
async def get_run(run_id: str, request: Request) -> dict[str, Any]:
    run = await _service(request).get_run(run_id)
    if run is None:
        raise HTTPException(404, detail=f"no run {run_id}")
    return jsonable_encoder(run)


@router.post(
    "/runs/{run_id}/reproduce",
    summary="Redo a succeeded run from its lineage; report whether the sha256 matched",
)
async def reproduce_run(run_id: str, request: Request) -> dict[str, Any]:
    try:
        outcome = await _service(request).reproduce(run_id)
    except ReproduceFailed as exc:
        raise HTTPException(409, detail=f"cannot reproduce: {exc}") from exc
    if outcome is None:
        raise HTTPException(404, detail=f"no run {run_id}")
    return outcome


@router.get(
    "/models/{name}/feedback/count",
    response_model=FeedbackCount,
    summary="How much joined feedback the trainer holds for this model",
)
async def feedback_count(name: ModelName, request: Request) -> FeedbackCount:
    return FeedbackCount(**await _service(request).feedback_count(name))
