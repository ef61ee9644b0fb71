"""The HTTP shell every service shares: health, readiness, metrics, body limit, request metrics.

Each service builds its FastAPI app with ``create_app`` and adds its own routers. A route whose
cost must stay near a bare ASGI app's (the scorer's inference routes) can also be registered as
a *fast route*: it is answered before the framework's middleware stack and router, with the same
body limit, the same request metrics and the same error shape, while the FastAPI route of the
same path stays in the OpenAPI document (and answers when the fast route is not installed).
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .metrics import Metrics

log = structlog.get_logger(__name__)

ReadinessCheck = Callable[[], Awaitable[dict[str, bool]]]
# a fast route's handler: (path parameters, raw body, request headers) -> (status, JSON bytes)
FastHandler = Callable[[dict[str, str], bytes, list[tuple[bytes, bytes]]], tuple[int, bytes]]
JSON_HEADER = (b"content-type", b"application/json")


@dataclass(frozen=True, slots=True)
class FastRoute:
    method: str
    template: str  # the route template, as the metrics label it
    pattern: re.Pattern[str]
    handler: FastHandler


def compile_template(template: str) -> re.Pattern[str]:
    """``/v2/models/{name}/infer`` -> a regex with one named group per parameter (no slash)."""
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(
        f"(?P<{part}>[^/]+)" if i % 2 else re.escape(part) for i, part in enumerate(parts)
    )
    return re.compile(f"^{regex}$")


class ServiceApp(FastAPI):
    """FastAPI plus fast routes, tried before the framework for plain HTTP requests."""

    def __init__(self, *args: Any, metrics: Metrics, max_body_bytes: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fast_routes: list[FastRoute] = []
        self._metrics = metrics
        self._max_body_bytes = max_body_bytes
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._timers: dict[tuple[str, str], Any] = {}

    def add_fast_route(self, method: str, template: str, handler: FastHandler) -> None:
        self.fast_routes.append(FastRoute(method, template, compile_template(template), handler))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.fast_routes:
            method, path = scope["method"], scope["path"]
            for route in self.fast_routes:
                if route.method == method:
                    match = route.pattern.match(path)
                    if match is not None:
                        await self._serve_fast(route, match.groupdict(), scope, receive, send)
                        return
        await super().__call__(scope, receive, send)

    async def _serve_fast(
        self, route: FastRoute, params: dict[str, str], scope: Any, receive: Any, send: Any
    ) -> None:
        started = time.perf_counter()
        headers = scope["headers"]
        body = await self._read_body(headers, receive)
        if body is None:
            status = 413
            payload = orjson.dumps(too_big(self._max_body_bytes))
        else:
            try:
                status, payload = route.handler(params, body, headers)
            except Exception as exc:  # a bug must still answer, with a reason, and be logged
                log.exception("http.fast_route_failed", route=route.template)
                status = 500
                error = f"{type(exc).__name__}: {exc}"[:500]
                payload = orjson.dumps({"error": error, "reason": "internal_error"})
        await _send_payload(send, status, payload)
        self._observe(route, status, time.perf_counter() - started)

    async def _read_body(self, headers: list[tuple[bytes, bytes]], receive: Any) -> bytes | None:
        """The whole body, or None when it is over the limit (by its length or as it comes)."""
        limit = self._max_body_bytes
        if declared_over(headers, limit):
            return None
        message = await receive()
        body = message.get("body", b"")
        while message.get("more_body", False):
            message = await receive()
            body += message.get("body", b"")
            if len(body) > limit:
                return None
        return body if len(body) <= limit else None

    def _observe(self, route: FastRoute, status: int, seconds: float) -> None:
        key = (route.method, route.template, status)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._metrics.http_requests.labels(route.method, route.template, str(status))
            self._counters[key] = counter
        counter.inc()
        timer = self._timers.get(key[:2])
        if timer is None:
            timer = self._metrics.http_seconds.labels(route.method, route.template)
            self._timers[key[:2]] = timer
        timer.observe(seconds)


class BodyLimitMiddleware:
    """Reject request bodies over ``max_bytes`` with 413 before the app reads them."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if declared_over(scope.get("headers", []), self.max_bytes):
            await _send_json(send, 413, too_big(self.max_bytes))
            return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # an HTTPException passes through FastAPI's body parsing and its exception
                    # middleware turns it into the 413 response
                    raise HTTPException(413, too_big(self.max_bytes)["detail"])
            return message

        await self.app(scope, limited_receive, send)


def declared_over(headers: list[tuple[bytes, bytes]], limit: int) -> bool:
    """Whether the request's ``content-length`` says its body is over ``limit`` bytes."""
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value) > limit
            except ValueError:
                return False
    return False


def too_big(limit: int) -> dict[str, str]:
    return {"detail": f"request body over {limit} bytes"}


async def _send_json(send: Callable, status: int, body: dict) -> None:
    await _send_payload(send, status, orjson.dumps(body))


async def _send_payload(send: Callable, status: int, payload: bytes) -> None:
    headers = [JSON_HEADER, (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class RequestMetricsMiddleware:
    """Count and time requests by route template (not raw path, to bound label cardinality)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            method = scope.get("method", "GET")
            self.metrics.http_requests.labels(method, template, str(status)).inc()
            self.metrics.http_seconds.labels(method, template).observe(
                time.perf_counter() - started
            )


def create_app(
    *,
    title: str,
    description: str,
    metrics: Metrics,
    readiness: ReadinessCheck,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[Any]] | None = None,
    max_body_bytes: int = 1_000_000,
    version: str = "0.1.0",
) -> ServiceApp:
    app = ServiceApp(
        title=title,
        description=description,
        version=version,
        lifespan=lifespan,
        metrics=metrics,
        max_body_bytes=max_body_bytes,
    )
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return JSONResponse(status_code=422, content={"detail": errors})

    @app.get("/health/live", tags=["health"], summary="The process is up")
    async def live() -> dict[str, str]:
        return {"status": "live"}

    @app.get("/health/ready", tags=["health"], summary="Broker and stores answer")
    async def ready() -> Response:
        checks = await readiness()
        ok = all(checks.values())
        return JSONResponse(
            status_code=200 if ok else 503,
            content={"status": "ready" if ok else "not ready", "checks": checks},
        )

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
