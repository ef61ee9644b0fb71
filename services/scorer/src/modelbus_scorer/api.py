"""HTTP scoring: the native API and the Open Inference Protocol v2 REST paths.

The scoring routes are hot routes (``install_hot_routes``): raw body -> orjson -> numpy ->
orjson, no pydantic per request, behind the same middleware chain as every route. Errors are
``ErrorBody`` with a reason: 400 malformed JSON, 422 invalid input, 404 unknown model or
version not served, 503 nothing loaded (413 for oversized bodies comes from the chain).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Response

from modelbus_ml.inputs import InputSpec
from modelbus_ml.outputs import Outputs
from modelbus_platform.http import (
    Headers,
    ServiceApp,
    Version,
    error_payload,
    error_responses,
    version_in_range,
)

from .api_models import InferRequest, InferResponse, PredictRequest, PredictResponse
from .domain import InvalidInput, ModelUnavailable, Served, parse_native, parse_v2
from .service import ScoreResult, ScorerService

PLATFORM = "modelbus-{family}"  # the family that trained it: logreg, sklearn, onnx (imported)
SERVER_NAME = "modelbus-scorer"
SERVER_VERSION = "0.1.0"
UNAVAILABLE_STATUS = {
    "unknown_model": 404,
    "not_synced": 503,
    "model_not_loaded": 503,
    "predict_failed": 503,
    "version_not_served": 404,
}
SCORING_ERRORS = {
    400: "invalid_json: the body is not JSON (NaN and Infinity literals included)",
    404: "unknown_model",
    422: "bad_request, bad_shape, bad_datatype, length_mismatch, feature_mismatch, "
    "not_a_number, non_finite, not_a_category, category_too_long, null_not_allowed, "
    "empty_batch, too_many_instances",
    503: "not_synced (no registry sync yet), model_not_loaded, predict_failed",
}
VERSION_ERRORS = {
    **SCORING_ERRORS,
    404: "unknown_model, version_not_served (the version is not the one being served)",
    422: SCORING_ERRORS[422] + "; bad_version (not an integer from 1 to 2**53)",
}
MODEL_ERRORS = {
    404: "unknown_model, version_not_served",
    503: "not_synced, model_not_loaded",
}

ROUTING_KEY_HEADER = {
    "parameters": [
        {
            "name": "X-Routing-Key",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "maxLength": 200},
            "description": "canary routing key (else the body's routing_key, else its id)",
        }
    ]
}

ReadinessCheck = Callable[[], Awaitable[dict[str, bool]]]


def json_response(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def error_response(reason: str, message: str, status: int) -> Response:
    return Response(
        error_payload(message, reason), status_code=status, media_type="application/json"
    )


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput("invalid_json", f"body is not valid JSON: {exc}") from exc


def routing_key(header: str | None, body: Any) -> str | None:
    """The canary routing key: header ``X-Routing-Key``, else ``routing_key`` in the body (or
    in v2 ``parameters``); without one the request id routes (and without that, chance)."""
    if header:
        return header[:200]
    if not isinstance(body, dict):
        return None
    params = body.get("parameters")
    key = body.get("routing_key") or (
        params.get("routing_key") if isinstance(params, dict) else None
    )
    return key[:200] if isinstance(key, str) and key else None


def header_value(headers: Headers, name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


class Scoring:
    """The scoring routes' handlers: (path parameters, raw body, headers) -> (status, JSON)."""

    def __init__(self, service: ScorerService) -> None:
        self.service = service

    def run(
        self,
        name: str,
        body: bytes,
        headers: Headers,
        parser: Any,
        version: int | None = None,
    ) -> ScoreResult | tuple[int, bytes]:
        try:
            doc = parse_json(body)
            return self.service.score(
                name,
                lambda names, limit: parser(doc, names, limit),
                version=version,
                routing_key=routing_key(header_value(headers, b"x-routing-key"), doc),
            )
        except InvalidInput as exc:
            if exc.reason == "invalid_json":
                self.service.metrics.rejected.labels(exc.reason, "http").inc()
                return 400, error_payload(exc.message, exc.reason)
            return 422, error_payload(exc.message, exc.reason)
        except ModelUnavailable as exc:
            return UNAVAILABLE_STATUS[exc.reason], error_payload(exc.message, exc.reason)

    def predict(self, params: dict[str, Any], body: bytes, headers: Headers) -> tuple[int, bytes]:
        name = params["name"]
        result = self.run(name, body, headers, _native)
        if isinstance(result, tuple):
            return result
        scored = result.scored
        payload = {
            "model_name": name,
            "model_version": scored.served.version,
            "request_id": result.request_id,
            "predictions": native_predictions(result.prediction_ids, scored.outputs),
            "served_by": scored.served_by,
        }
        return 200, orjson.dumps(payload)

    def infer(self, params: dict[str, Any], body: bytes, headers: Headers) -> tuple[int, bytes]:
        version = None
        if "version" in params:
            try:
                version = int(params["version"])
            except ValueError:
                version = 0
            if not version_in_range(version):
                message = f"version must be an integer from 1 to 2**53, got {params['version']!r}"
                return 422, error_payload(message, "bad_version")
        result = self.run(params["name"], body, headers, _v2, version)
        if isinstance(result, tuple):
            return result
        return 200, orjson.dumps(v2_response(result))


def install_hot_routes(app: ServiceApp, scoring: Scoring) -> None:
    """The scoring routes, answered on raw bytes by the data plane (documented in OpenAPI)."""
    app.add_hot_route(
        "POST",
        "/v2/models/{name}/infer",
        scoring.infer,
        name="infer_v2",
        tags=["v2"],
        summary="Open Inference Protocol infer",
        request_model=InferRequest,
        openapi_extra=ROUTING_KEY_HEADER,
        response_model=InferResponse,
        responses=error_responses(SCORING_ERRORS),
    )
    app.add_hot_route(
        "POST",
        "/v2/models/{name}/versions/{version}/infer",
        scoring.infer,
        name="infer_v2_version",
        tags=["v2"],
        summary="Infer on a given version (404 unless it is the one being served)",
        request_model=InferRequest,
        openapi_extra=ROUTING_KEY_HEADER,
        response_model=InferResponse,
        responses=error_responses(VERSION_ERRORS),
    )
    app.add_hot_route(
        "POST",
        "/models/{name}/predict",
        scoring.predict,
        name="predict_native",
        tags=["scoring"],
        summary="Score instances",
        request_model=PredictRequest,
        openapi_extra=ROUTING_KEY_HEADER,
        response_model=PredictResponse,
        responses=error_responses(SCORING_ERRORS),
    )


def build_router(service: ScorerService, readiness: ReadinessCheck) -> APIRouter:
    """The scorer's other routes (metadata, readiness); the scoring routes are hot routes."""
    router = APIRouter()

    @router.get("/v2/health/live", tags=["v2"])
    async def v2_live() -> Response:
        return json_response({"live": True})

    @router.get(
        "/v2/health/ready",
        tags=["v2"],
        responses={503: {"description": "not ready: {ready: false, checks}"}},
    )
    async def v2_ready() -> Response:
        checks = await readiness()
        ok = all(checks.values())
        return json_response({"ready": ok, "checks": checks}, 200 if ok else 503)

    @router.get("/v2", tags=["v2"], summary="Server metadata")
    async def v2_server() -> Response:
        return json_response({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": []})

    def loaded(name: str, version: int | None) -> Served:
        """The version being served for the metadata/ready paths, or ``ModelUnavailable``."""
        slots = service.holder.get(name)
        if slots is None:
            if not service.synced.is_set():
                raise ModelUnavailable("not_synced", "the scorer has not synced with the registry")
            raise ModelUnavailable("unknown_model", f"unknown model {name!r}")
        current = slots.current
        if current is None:
            raise ModelUnavailable("model_not_loaded", f"model {name!r} is not loaded yet")
        if version is not None and version != current.version:
            message = f"model {name!r} serves version {current.version}"
            raise ModelUnavailable("version_not_served", message)
        return current

    def metadata_of(name: str, version: int | None) -> Response:
        """The served version's metadata (``version``: 404 unless it is the one served)."""
        try:
            current = loaded(name, version)
        except ModelUnavailable as exc:
            return error_response(exc.reason, exc.message, UNAVAILABLE_STATUS[exc.reason])
        slots = service.holder.get(name)
        previous = slots.previous if slots else None
        return json_response(v2_metadata(name, current, previous))

    def ready_of(name: str, version: int | None) -> Response:
        try:
            current = loaded(name, version)
        except ModelUnavailable as exc:
            return error_response(exc.reason, exc.message, UNAVAILABLE_STATUS[exc.reason])
        return json_response({"name": name, "ready": True, "version": current.version})

    async def metadata(name: str) -> Response:
        return metadata_of(name, None)

    async def model_ready(name: str) -> Response:
        return ready_of(name, None)

    # the versioned paths: the same answers, the version bounded as every route's (422)
    async def version_metadata(name: str, version: Version) -> Response:
        return metadata_of(name, version)

    async def version_ready(name: str, version: Version) -> Response:
        return ready_of(name, version)

    model_errors = error_responses(MODEL_ERRORS)
    router.add_api_route(
        "/v2/models/{name}",
        metadata,
        methods=["GET"],
        tags=["v2"],
        summary="Model metadata",
        responses=model_errors,
    )
    router.add_api_route(
        "/v2/models/{name}/versions/{version}",
        version_metadata,
        methods=["GET"],
        tags=["v2"],
        summary="Metadata of a version (404 unless it is the one being served)",
        responses=model_errors,
    )
    router.add_api_route(
        "/v2/models/{name}/ready",
        model_ready,
        methods=["GET"],
        tags=["v2"],
        summary="Model ready (200) or why not",
        responses=model_errors,
    )
    router.add_api_route(
        "/v2/models/{name}/versions/{version}/ready",
        version_ready,
        methods=["GET"],
        tags=["v2"],
        summary="Version ready (200) or why not",
        responses=model_errors,
    )
    return router


def _native(body: Any, served: Served, limit: int) -> tuple[Any, str | None]:
    parsed = parse_native(body, served, limit)
    return parsed.X, parsed.request_id


def _v2(body: Any, served: Served, limit: int) -> tuple[Any, str | None]:
    parsed = parse_v2(body, served, limit)
    return parsed.X, parsed.id


def native_predictions(ids: list[str], outputs: Outputs) -> list[dict[str, Any]]:
    """Per row: binary ``score`` and ``label`` (0/1); multiclass ``label`` (the class),
    ``score`` (its probability) and ``probabilities`` (per class); regression ``value``."""
    if outputs.task == "binary":
        return [
            {"prediction_id": pid, "score": s, "label": lab}
            for pid, s, lab in zip(
                ids, outputs.scores.tolist(), outputs.labels.tolist(), strict=True
            )
        ]
    if outputs.task == "regression":
        values = outputs.values.tolist()
        return [{"prediction_id": pid, "value": v} for pid, v in zip(ids, values, strict=True)]
    classes = outputs.classes
    return [
        {
            "prediction_id": pid,
            "label": lab,
            "score": s,
            "probabilities": dict(zip(classes, p, strict=True)),
        }
        for pid, lab, s, p in zip(
            ids,
            outputs.labels.tolist(),
            outputs.scores.tolist(),
            outputs.proba.tolist(),
            strict=True,
        )
    ]


def v2_metadata(name: str, current: Served, previous: Served | None) -> dict[str, Any]:
    """Inputs per the signature (FP64 for a number, BYTES for a category; ``nullable`` where
    a feature may be null); outputs per task, as ``v2_outputs`` names them."""
    spec = InputSpec.of(current)
    inputs = []
    for feature, kind, nullable in spec.features():
        tensor: dict[str, Any] = {
            "name": feature,
            "datatype": "BYTES" if kind == "category" else "FP64",
            "shape": [-1],
        }
        if nullable:
            tensor["parameters"] = {"nullable": True}
        inputs.append(tensor)
    parameters: dict[str, Any] = {
        "version": current.version,
        "sha256": current.sha256,
        "task": current.task,
    }
    if current.task == "multiclass":
        parameters["classes"] = list(current.classes)
    return {
        "name": name,
        "versions": [str(s.version) for s in (current, previous) if s is not None],
        "platform": PLATFORM.format(family=getattr(current.model, "family", "logreg") or "onnx"),
        "inputs": inputs,
        "outputs": output_metadata(current.task, current.classes),
        "parameters": parameters,
    }


def output_metadata(task: str, classes: tuple[str, ...]) -> list[dict[str, Any]]:
    if task == "binary":
        return [
            {"name": "score", "datatype": "FP64", "shape": [-1]},
            {"name": "label", "datatype": "INT64", "shape": [-1]},
        ]
    if task == "regression":
        return [{"name": "value", "datatype": "FP64", "shape": [-1]}]
    return [
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "score", "datatype": "FP64", "shape": [-1]},
        {
            "name": "probabilities",
            "datatype": "FP64",
            "shape": [-1, len(classes)],
            "parameters": {"classes": list(classes)},
        },
    ]


def v2_outputs(outputs: Outputs, n: int) -> list[dict[str, Any]]:
    """The response tensors of each task. Binary: ``score`` (P(class 1)) and ``label``
    (INT64). Multiclass: ``label`` (BYTES, the class; ``content_type`` "str" as MLServer marks
    strings), ``score`` (P(that class)) and ``probabilities`` (FP64 [n, k], the classes in
    its ``parameters``). Regression: ``value`` (FP64 [n]; MLServer's scikit-learn runtime
    calls it ``predict``)."""
    if outputs.task == "binary":
        return [
            {"name": "score", "datatype": "FP64", "shape": [n], "data": outputs.scores.tolist()},
            {"name": "label", "datatype": "INT64", "shape": [n], "data": outputs.labels.tolist()},
        ]
    if outputs.task == "regression":
        return [
            {"name": "value", "datatype": "FP64", "shape": [n], "data": outputs.values.tolist()}
        ]
    classes = list(outputs.classes)
    return [
        {
            "name": "label",
            "datatype": "BYTES",
            "shape": [n],
            "data": outputs.labels.tolist(),
            "parameters": {"content_type": "str"},
        },
        {"name": "score", "datatype": "FP64", "shape": [n], "data": outputs.scores.tolist()},
        {
            "name": "probabilities",
            "datatype": "FP64",
            "shape": [n, len(classes)],
            "data": outputs.proba.ravel().tolist(),
            "parameters": {"classes": classes},
        },
    ]


def v2_response(result: ScoreResult) -> dict[str, Any]:
    scored = result.scored
    n = len(result.prediction_ids)
    return {
        "model_name": result.model_name,
        "model_version": str(scored.served.version),
        "id": result.request_id,
        "outputs": v2_outputs(scored.outputs, n),
        "parameters": {"prediction_ids": result.prediction_ids, "served_by": scored.served_by},
    }
