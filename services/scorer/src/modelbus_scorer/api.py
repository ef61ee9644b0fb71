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

from .domain import InvalidInput, ModelUnavailable, parse_native, parse_v2
from .service import ScoreResult, ScorerService

PLATFORM = "modelbus-logreg"
SERVER_NAME = "modelbus-scorer"
SERVER_VERSION = "0.1.0"
UNAVAILABLE_STATUS = {
    "unknown_model": 404,
    "not_synced": 503,
    "model_not_loaded": 503,
    "predict_failed": 503,
}

ReadinessCheck = Callable[[], Awaitable[dict[str, bool]]]


def json_response(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def error_response(reason: str, message: str, status: int) -> Response:
    return json_response({"error": message, "reason": reason}, status)


async def read_json(request: Request) -> Any:
    try:
        return orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise InvalidInput("invalid_json", f"body is not valid JSON: {exc}") from exc


def build_router(service: ScorerService, readiness: ReadinessCheck) -> APIRouter:
    router = APIRouter()

    async def run(name: str, request: Request, parser: Any) -> ScoreResult | Response:
        try:
            body = await read_json(request)
            return service.score(name, lambda names, limit: parser(body, names, limit))
        except InvalidInput as exc:
            if exc.reason == "invalid_json":
                service.metrics.rejected.labels(exc.reason, "http").inc()
                return error_response(exc.reason, exc.message, 400)
            return error_response(exc.reason, exc.message, 422)
        except ModelUnavailable as exc:
            return error_response(exc.reason, exc.message, UNAVAILABLE_STATUS[exc.reason])

    def unknown(name: str) -> Response:
        if not service.synced.is_set():
            return error_response("not_synced", "the scorer has not synced with the registry", 503)
        return error_response("unknown_model", f"unknown model {name!r}", 404)

    @router.post("/models/{name}/predict", tags=["scoring"], summary="Score instances")
    async def predict_native(name: str, request: Request) -> Response:
        """Body ``{"instances": [{feature: number, ...}], "request_id"?}`` or
        ``{"features": {...}}``."""
        result = await run(name, request, _native)
        if isinstance(result, Response):
            return result
        scored = result.scored
        predictions = [
            {"prediction_id": pid, "score": s, "label": lab}
            for pid, s, lab in zip(
                result.prediction_ids, scored.scores.tolist(), scored.labels.tolist(), strict=True
            )
        ]
        return json_response(
            {
                "model_name": name,
                "model_version": scored.served.version,
                "request_id": result.request_id,
                "predictions": predictions,
                "served_by": scored.served_by,
            }
        )

    @router.post("/v2/models/{name}/infer", tags=["v2"], summary="Open Inference Protocol infer")
    async def infer_v2(name: str, request: Request) -> Response:
        result = await run(name, request, _v2)
        if isinstance(result, Response):
            return result
        return json_response(v2_response(result))

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

    @router.get("/v2/models/{name}", tags=["v2"], summary="Model metadata")
    async def v2_model(name: str) -> Response:
        slots = service.holder.get(name)
        if slots is None:
            return unknown(name)
        if slots.current is None:
            return error_response("model_not_loaded", f"model {name!r} is not loaded yet", 503)
        current = slots.current
        versions = [str(s.version) for s in (current, slots.previous) if s is not None]
        return json_response(
            {
                "name": name,
                "versions": versions,
                "platform": PLATFORM,
                "inputs": [
                    {"name": f, "datatype": "FP64", "shape": [-1]} for f in current.feature_names
                ],
                "outputs": [
                    {"name": "score", "datatype": "FP64", "shape": [-1]},
                    {"name": "label", "datatype": "INT64", "shape": [-1]},
                ],
                "parameters": {"version": current.version, "sha256": current.sha256},
            }
        )

    @router.get("/v2/models/{name}/ready", tags=["v2"], summary="Model readiness")
    async def v2_model_ready(name: str) -> Response:
        slots = service.holder.get(name)
        if slots is None:
            return unknown(name)
        if slots.current is None:
            return json_response(
                {"name": name, "ready": False, "reason": "no version loaded yet"}, 503
            )
        return json_response({"name": name, "ready": True, "version": slots.current.version})

    return router


def _native(body: Any, names: tuple[str, ...], limit: int) -> tuple[Any, str | None]:
    parsed = parse_native(body, names, limit)
    return parsed.X, parsed.request_id


def _v2(body: Any, names: tuple[str, ...], limit: int) -> tuple[Any, str | None]:
    parsed = parse_v2(body, names, limit)
    return parsed.X, parsed.id


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
