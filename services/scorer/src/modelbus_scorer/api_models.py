"""The scoring routes' bodies as pydantic models, for the OpenAPI document only.

The routes read and write raw JSON (``api.py``, ``domain.parse_v2``/``parse_native``): nothing
builds these per request. The API tests validate real requests and answers against them, so
the document cannot drift from what the routes do.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .domain import ServedBy

Datatype = Literal["FP32", "FP64", "INT32", "INT64", "BYTES"]
TensorData = list[Any]  # numbers or strings (BYTES), row-major; nested lists are flattened
FeatureValue = float | str | None  # a number, a category, or null (a nullable feature)


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class InferInput(_Body):
    name: str = Field(description="a feature's name, or any name for one [n, k] input")
    shape: list[int] = Field(
        description="[n] or [n, 1] for one feature; [n, k] for all k (all-number models)"
    )
    datatype: Datatype = Field(description="BYTES for a category feature, else a number type")
    data: TensorData = Field(
        description="finite numbers, or strings for BYTES, row-major (nested lists accepted); "
        "null for a missing value of a nullable feature"
    )
    parameters: dict[str, Any] | None = None


class InferRequestedOutput(_Body):
    name: str


class InferParameters(_Body):
    routing_key: str | None = Field(
        default=None, description="canary routing key (else header X-Routing-Key, else id)"
    )


class InferRequest(_Body):
    """Open Inference Protocol v2 inference request: one input per model feature, or one
    2-D input whose columns are the features in the model's order."""

    id: str | None = Field(default=None, description="echoed in the response")
    inputs: list[InferInput] = Field(min_length=1)
    outputs: list[InferRequestedOutput] | None = Field(
        default=None, description="ignored: every output of the model's task is returned"
    )
    parameters: InferParameters | None = None


class InferOutput(BaseModel):
    name: Literal["score", "label", "probabilities", "value"]
    datatype: Literal["FP64", "INT64", "BYTES"]
    shape: list[int]
    data: list[float] | list[int] | list[str]
    parameters: dict[str, Any] | None = Field(
        default=None,
        description="probabilities: {classes: [...]} (the column order); label (multiclass): "
        "{content_type: str}",
    )


class InferResponseParameters(BaseModel):
    prediction_ids: list[str] = Field(description="one per row: join labels on it later")
    served_by: ServedBy


class InferResponse(BaseModel):
    """Open Inference Protocol v2 inference response. Binary: ``score`` (FP64, the positive
    class's probability) and ``label`` (INT64) per row; multiclass: ``label`` (BYTES, the
    class), ``score`` (its probability) and ``probabilities`` (FP64 [n, classes]); regression:
    ``value`` (FP64)."""

    model_name: str
    model_version: str
    id: str | None
    outputs: list[InferOutput]
    parameters: InferResponseParameters


class PredictRequest(_Body):
    """Native scoring: ``instances`` (rows) or ``features`` (one row), each a
    ``{feature: value}`` object with exactly the model's features: a number for a number
    feature, a string for a category, null only where the signature allows it."""

    instances: list[dict[str, FeatureValue]] | None = Field(default=None, min_length=1)
    features: dict[str, FeatureValue] | None = None
    request_id: str | None = Field(default=None, description="echoed in the response")
    routing_key: str | None = Field(
        default=None, description="canary routing key (else header X-Routing-Key, else id)"
    )


class Prediction(BaseModel):
    """Binary: ``score`` (P(class 1)) and ``label`` (0/1); multiclass: ``label`` (the class),
    ``score`` (its probability) and ``probabilities``; regression: ``value``."""

    model_config = ConfigDict(extra="forbid")

    prediction_id: str
    score: float | None = None
    label: int | str | None = None
    probabilities: dict[str, float] | None = None
    value: float | None = None


class PredictResponse(BaseModel):
    model_name: str
    model_version: int
    request_id: str | None
    predictions: list[Prediction]
    served_by: ServedBy
