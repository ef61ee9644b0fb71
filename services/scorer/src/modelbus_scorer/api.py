"""HTTP scoring: the native API and the Open Inference Protocol v2 REST paths.

The hot path is lean on purpose: raw body -> orjson -> numpy -> orjson, no pydantic per row.
Errors carry a reason: 400 malformed JSON, 422 invalid input, 404 unknown model, 503 nothing
loaded (413 for oversized bodies comes from the platform middleware).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from modelbus_platform.http import ServiceApp

from .domain import InvalidInput, ModelUnavailable, Served, parse_native, parse_v2
from .service import ScoreResult, ScorerService

PLATFORM = "modelbus-logreg"
SERVER_NAME = "modelbus-scorer"
SERVER_VERSION = "0.1.0"
UNAVAILABLE_STATUS = {
    "unknown_model": 404,
    "not_synced": 503,
    "model_not_loaded": 503,
    "predict_failed": 503,
    "version_not_served": 404,
}

ReadinessCheck = Callable[[], Awaitable[dict[str, bool]]]


def json_response(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def error_response(reason: str, message: str, status: int) -> Response:
    return json_response({"error": message, "reason": reason}, status)


def error_payload(reason: str, message: str, status: int) -> tuple[int, bytes]:
    return status, orjson.dumps({"error": message, "reason": reason})


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


def header_value(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


class Scoring:
    """The scoring routes' logic on raw bytes: one implementation behind both the FastAPI
    routes (documented in OpenAPI) and the fast routes that answer them in production."""

    def __init__(self, service: ScorerService) -> None:
        self.service = service

    def run(
        self,
        name: str,
        body: bytes,
        routing_header: str | None,
        parser: Any,
        version: int | None = None,
    ) -> ScoreResult | tuple[int, bytes]:
        try:
            doc = parse_json(body)
            return self.service.score(
                name,
                lambda names, limit: parser(doc, names, limit),
                version=version,
                routing_key=routing_key(routing_header, doc),
            )
        except InvalidInput as exc:
            if exc.reason == "invalid_json":
                self.service.metrics.rejected.labels(exc.reason, "http").inc()
                return error_payload(exc.reason, exc.message, 400)
            return error_payload(exc.reason, exc.message, 422)
        except ModelUnavailable as exc:
            return error_payload(exc.reason, exc.message, UNAVAILABLE_STATUS[exc.reason])

    def native(self, name: str, body: bytes, routing_header: str | None) -> tuple[int, bytes]:
        result = self.run(name, body, routing_header, _native)
        if isinstance(result, tuple):
            return result
        scored = result.scored
        predictions = [
            {"prediction_id": pid, "score": s, "label": lab}
            for pid, s, lab in zip(
                result.prediction_ids, scored.scores.tolist(), scored.labels.tolist(), strict=True
            )
        ]
        payload = {
            "model_name": name,
            "model_version": scored.served.version,
            "request_id": result.request_id,
            "predictions": predictions,
            "served_by": scored.served_by,
        }
        return 200, orjson.dumps(payload)

    def v2(
        self, name: str, body: bytes, routing_header: str | None, version: int | None = None
    ) -> tuple[int, bytes]:
        result = self.run(name, body, routing_header, _v2, version)
        if isinstance(result, tuple):
            return result
        return 200, orjson.dumps(v2_response(result))

    # -- the fast routes: (path parameters, body, headers) -> (status, JSON) ----------------

    def fast_native(
        self, params: dict[str, str], body: bytes, headers: list[tuple[bytes, bytes]]
    ) -> tuple[int, bytes]:
        return self.native(params["name"], body, header_value(headers, b"x-routing-key"))

    def fast_v2(
        self, params: dict[str, str], body: bytes, headers: list[tuple[bytes, bytes]]
    ) -> tuple[int, bytes]:
        version = None
        if "version" in params:
            try:
                version = int(params["version"])
            except ValueError:
                message = f"version must be an integer, got {params['version']!r}"
                return error_payload("bad_version", message, 422)
        return self.v2(params["name"], body, header_value(headers, b"x-routing-key"), version)


def install_fast_routes(app: ServiceApp, scoring: Scoring) -> None:
    """Answer the scoring routes before the framework (same paths, same answers)."""
    app.add_fast_route("POST", "/v2/models/{name}/infer", scoring.fast_v2)
    app.add_fast_route("POST", "/v2/models/{name}/versions/{version}/infer", scoring.fast_v2)
    app.add_fast_route("POST", "/models/{name}/predict", scoring.fast_native)


def build_router(service: ScorerService, readiness: ReadinessCheck) -> APIRouter:
    router = APIRouter()
    scoring = Scoring(service)

    def respond(answer: tuple[int, bytes]) -> Response:
        return Response(answer[1], status_code=answer[0], media_type="application/json")

    @router.post("/models/{name}/predict", tags=["scoring"], summary="Score instances")
    async def predict_native(name: str, request: Request) -> Response:
        """Body ``{"instances": [{feature: number, ...}], "request_id"?}`` or
        ``{"features": {...}}``."""
        body = await request.body()
        return respond(scoring.native(name, body, request.headers.get("x-routing-key")))

    @router.post("/v2/models/{name}/infer", tags=["v2"], summary="Open Inference Protocol infer")
    async def infer_v2(name: str, request: Request) -> Response:
        body = await request.body()
        return respond(scoring.v2(name, body, request.headers.get("x-routing-key")))

    @router.post(
        "/v2/models/{name}/versions/{version}/infer",
        tags=["v2"],
        summary="Infer on a given version (404 unless it is the one being served)",
    )
    async def infer_v2_version(name: str, version: int, request: Request) -> Response:
        body = await request.body()
        return respond(scoring.v2(name, body, request.headers.get("x-routing-key"), version))

    @router.get("/v2/health/live", tags=["v2"])
    async def v2_live() -> Response:
        return json_response({"live": True})

    @router.get("/v2/health/ready", tags=["v2"])
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

    async def metadata(name: str, version: int | None = None) -> Response:
        try:
            current = loaded(name, version)
        except ModelUnavailable as exc:
            return error_response(exc.reason, exc.message, UNAVAILABLE_STATUS[exc.reason])
        slots = service.holder.get(name)
        previous = slots.previous if slots else None
        return json_response(v2_metadata(name, current, previous))

    async def model_ready(name: str, version: int | None = None) -> Response:
        try:
            current = loaded(name, version)
        except ModelUnavailable as exc:
            body = {"name": name, "ready": False, "reason": exc.reason, "error": exc.message}
            return json_response(body, UNAVAILABLE_STATUS[exc.reason])
        return json_response({"name": name, "ready": True, "version": current.version})

    router.add_api_route(
        "/v2/models/{name}", metadata, methods=["GET"], tags=["v2"], summary="Model metadata"
    )
    router.add_api_route(
        "/v2/models/{name}/versions/{version}",
        metadata,
        methods=["GET"],
        tags=["v2"],
        summary="Metadata of a version (404 unless it is the one being served)",
    )
    router.add_api_route(
        "/v2/models/{name}/ready", model_ready, methods=["GET"], tags=["v2"], summary="Model ready"
    )
    router.add_api_route(
        "/v2/models/{name}/versions/{version}/ready",
        model_ready,
        methods=["GET"],
        tags=["v2"],
        summary="Version ready",
    )
    return router


def _native(body: Any, names: tuple[str, ...], limit: int) -> tuple[Any, str | None]:
    parsed = parse_native(body, names, limit)
    return parsed.X, parsed.request_id


def _v2(body: Any, names: tuple[str, ...], limit: int) -> tuple[Any, str | None]:
    parsed = parse_v2(body, names, limit)
    return parsed.X, parsed.id


def v2_metadata(name: str, current: Served, previous: Served | None) -> dict[str, Any]:
    return {
        "name": name,
        "versions": [str(s.version) for s in (current, previous) if s is not None],
        "platform": PLATFORM,
        "inputs": [{"name": f, "datatype": "FP64", "shape": [-1]} for f in current.feature_names],
        "outputs": [
            {"name": "score", "datatype": "FP64", "shape": [-1]},
            {"name": "label", "datatype": "INT64", "shape": [-1]},
        ],
        "parameters": {"version": current.version, "sha256": current.sha256},
    }


def v2_response(result: ScoreResult) -> dict[str, Any]:
    scored = result.scored
    n = len(result.prediction_ids)
    return {
        "model_name": result.model_name,
        "model_version": str(scored.served.version),
        "id": result.request_id,
        "outputs": [
            {"name": "score", "datatype": "FP64", "shape": [n], "data": scored.scores.tolist()},
            {"name": "label", "datatype": "INT64", "shape": [n], "data": scored.labels.tolist()},
        ],
        "parameters": {"prediction_ids": result.prediction_ids, "served_by": scored.served_by},
    }
