"""The HTTP shell every service shares: one middleware chain for every route, a data plane that
answers hot routes on raw bytes, the one error body, health, readiness and metrics.

Every request goes through the same chain, whichever route answers it::

    RequestMetricsMiddleware   counts and times it by route template (scope["route"].path)
    ErrorMiddleware            an exception nobody answered: logged, 500 in the error shape
    BodyLimitMiddleware        a body over max_body_bytes: 413 when the route reads it
    app.add_middleware(...)    the service's own: authentication, request ids, tracing
    DataPlane                  a hot route: its handler on raw bytes; anything else: FastAPI
                               (its exception handlers and router, none of the layers above)

A hot route (``ServiceApp.add_hot_route``) is a FastAPI route as well (``HotRoute``): it is in
the OpenAPI document with its request and response schemas and its statuses, and FastAPI's
router answers it the same way when the data plane's router is off (``fast_router=False``).
The data plane is a faster router behind the chain, never a way around it.

Every error answer is ``ErrorBody`` (``modelbus_contracts.api``): ``{"error", "reason"}`` and
optional ``details``. Raise ``ApiError`` for one with a reason of its own; a plain
``HTTPException`` gets the reason of its status. ``error_responses`` documents a route's
error statuses; the chain's own (413, 422, 500) are added to every route it applies to.
"""

from __future__ import annotations

import inspect
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from http import HTTPStatus
from typing import Annotated, Any, Literal

import orjson
import structlog
from fastapi import FastAPI, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.convertors import FloatConvertor, IntegerConvertor, StringConvertor, UUIDConvertor
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.routing import compile_path

from modelbus_contracts.api import VERSION_MAX, ErrorBody
from modelbus_contracts.envelope import MODEL_NAME_MAX_LENGTH, MODEL_NAME_PATTERN

from .metrics import Metrics

log = structlog.get_logger(__name__)

# A model name in a route's path: the contracts' rule, refused with 422 otherwise.
ModelName = Annotated[
    str, Path(min_length=1, max_length=MODEL_NAME_MAX_LENGTH, pattern=MODEL_NAME_PATTERN)
]
# A model version in a route's path: 1..VERSION_MAX, refused with 422 otherwise (an unbounded
# int reaches a store as an int64 overflow: a 500).
Version = Annotated[int, Path(ge=1, le=VERSION_MAX, description="a model version (1, 2, ...)")]


def version_in_range(value: int) -> bool:
    """A version a route may look up (hot routes parse their path themselves)."""
    return 1 <= value <= VERSION_MAX


ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
ReadinessCheck = Callable[[], Awaitable[dict[str, bool]]]
Headers = list[tuple[bytes, bytes]]
# a hot route's handler: (path parameters, raw body, request headers) -> (status, JSON bytes)
HotHandler = Callable[[dict[str, Any], bytes, Headers], tuple[int, bytes]]

JSON_CONTENT_TYPE = (b"content-type", b"application/json")
REF_TEMPLATE = "#/components/schemas/{model}"
ERROR_SCHEMA_REF = REF_TEMPLATE.format(model="ErrorBody")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# the reason of an error raised without one: its status, as a short code
STATUS_REASONS = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    500: "internal_error",
    503: "unavailable",
}
# FastAPI's built-in OpenTelemetry stays off: it would trace only the routes FastAPI answers;
# tracing belongs in the chain (an ASGI tracing middleware added with add_middleware)
FRAMEWORK_TELEMETRY_OFF = {"tracing": False, "metrics": False, "logs": False}


# -- the error body ----------------------------------------------------------------------------


class ApiError(HTTPException):
    """An error answer: ``ErrorBody(error=message, reason=reason, details=details)``. Raise it in
    a route, a dependency or a middleware; the status's own reason if none is given."""

    def __init__(
        self,
        status_code: int,
        message: str,
        reason: str | None = None,
        *,
        details: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status_code, detail=message, headers=headers)
        self.reason = reason or reason_of(status_code)
        self.details = details

    @classmethod
    def invalid(
        cls, errors: Iterable[Mapping[str, Any]], reason: str = "validation_error"
    ) -> ApiError:
        """422 from pydantic's errors: each as ``{loc, msg, type}`` (never the input itself)."""
        details = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in errors
        ]
        message = "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in details)
        return cls(422, message or "invalid request", reason, details=details)


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes", "body_too_large")


def reason_of(status: int) -> str:
    return STATUS_REASONS.get(status) or _phrase(status).lower().replace(" ", "_")


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error_payload(message: str, reason: str, details: Any = None) -> bytes:
    """``ErrorBody`` as JSON without pydantic (hot routes answer errors with it too)."""
    body: dict[str, Any] = {"error": message, "reason": reason}
    if details is not None:
        body["details"] = details
    return orjson.dumps(body)


def http_error(exc: HTTPException) -> tuple[int, bytes, Mapping[str, str] | None]:
    """The answer to an ``HTTPException``: status, ``ErrorBody`` JSON, headers (e.g. Allow)."""
    status = exc.status_code
    if isinstance(exc, ApiError):
        return status, error_payload(exc.detail, exc.reason, exc.details), exc.headers
    detail: Any = exc.detail
    if isinstance(detail, str):
        return status, error_payload(detail, reason_of(status)), exc.headers
    details = detail if isinstance(detail, list) else [detail]
    return status, error_payload(_phrase(status), reason_of(status), details), exc.headers


def error_responses(descriptions: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses`` for OpenAPI: each error status, what it means, ``ErrorBody`` (as
    JSON, whatever the route's own media type)."""
    return {status: _error_doc(text) for status, text in descriptions.items()}


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting a JSON request body a route reads itself (so it chooses how
    to refuse a bad one): ``model``'s schema, inline (its nested models go to components)."""
    schema = model.model_json_schema(ref_template=REF_TEMPLATE)
    content = {"application/json": {"schema": schema}}
    return {"requestBody": {"required": True, "content": content}}


async def send_json(
    send: Callable[[dict[str, Any]], Awaitable[None]],
    status: int,
    payload: bytes,
    headers: Mapping[str, str] | None = None,
) -> None:
    raw = [JSON_CONTENT_TYPE, (b"content-length", str(len(payload)).encode())]
    if headers:
        raw.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


async def _http_exception_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
        # FastAPI's 400 for a JSON body that is not UTF-8: a body not as documented, as
        # FastAPI's own 422 for one that is not JSON
        exc = ApiError(422, "the body is not UTF-8 JSON", "validation_error")
    status, payload, headers = http_error(exc)
    if status in (204, 304):
        return Response(status_code=status, headers=headers)
    return Response(payload, status_code=status, headers=headers, media_type="application/json")


async def _validation_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return await _http_exception_handler(request, ApiError.invalid(exc.errors()))


# -- the chain ---------------------------------------------------------------------------------


class _Response:
    """Wraps ``send`` to note the response's status once it starts. It hands back the inner
    ``send``'s awaitable rather than awaiting it: no coroutine of its own per message."""

    __slots__ = ("send", "status")

    def __init__(self, send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        self.send = send
        self.status: int | None = None

    def __call__(self, message: dict[str, Any]) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        return self.send(message)


class RequestMetricsMiddleware:
    """Count and time every request by method, route template and status (the template, not
    the raw path, bounds the label values; so does mapping unknown methods to OTHER)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.observe = metrics.http.observe

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        response = _Response(send)
        try:
            await self.app(scope, receive, response)
        finally:
            method = scope["method"]
            self.observe(
                method if method in METHODS else "OTHER",
                getattr(scope.get("route"), "path", "unmatched"),
                response.status or 500,
                time.perf_counter() - started,
            )


class ErrorMiddleware:
    """Answer what nothing inside answered: an ``HTTPException`` (one raised by a middleware)
    in the error shape, any other exception as 500 ``internal_error``, logged with its
    traceback. After the response has started there is nothing left to answer: re-raised."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # the metrics layer just outside already notes the status: share its recorder
        response = send if type(send) is _Response else _Response(send)
        try:
            await self.app(scope, receive, response)
        except Exception as exc:
            if response.status is not None:
                raise
            if isinstance(exc, HTTPException):
                status, payload, headers = http_error(exc)
            else:
                route = getattr(scope.get("route"), "path", "unmatched")
                log.exception("http.unhandled_error", method=scope["method"], route=route)
                message = f"internal error ({type(exc).__name__}), logged by the service"
                status, payload, headers = 500, error_payload(message, "internal_error"), None
            await send_json(send, status, payload, headers)


SHELL_PATHS = frozenset(
    {"/health/live", "/health/ready", "/metrics", "/openapi.json", "/docs", "/redoc"}
)


class StartingGate:
    """Until the service is started (the kit sets ``app.state.context`` once its resources,
    consumers and tasks run), every route but the shell's (health, metrics, docs) answers 503
    ``starting``: no route reaches a store or client that is not connected yet."""

    def __init__(self, app: ASGIApp, service: str, open_paths: Iterable[str] = ()) -> None:
        self.app = app
        self.open_paths = SHELL_PATHS | set(open_paths)
        self.payload = error_payload(f"the {service} is starting", "starting")

    def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[None]:
        if (
            scope["type"] == "http"
            and scope["app"].state.context is None
            and route_path(scope) not in self.open_paths
        ):
            return send_json(send, 503, self.payload, {"retry-after": "1"})
        return self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuse a body over ``max_bytes`` with 413 when the route reads it (so the 413 is counted
    under the route's template): at once if its ``content-length`` says so, else as it comes.
    A body declared within the limit is left alone: the server holds it to its length."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        uploads: re.Pattern[str] | None = None,
        upload_max_bytes: int | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self._refuse = _Refuse(max_bytes)
        self.uploads = uploads  # the upload routes' paths: ``upload_max_bytes`` instead
        self.upload_max_bytes = upload_max_bytes or max_bytes

    def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[None]:
        # it only swaps ``receive``, so it hands back the inner app's awaitable: no coroutine
        # of its own per request
        if scope["type"] == "http":
            limit, refuse = self.max_bytes, self._refuse
            if self.uploads is not None and self.uploads.fullmatch(scope["path"]):
                limit = self.upload_max_bytes
                refuse = _Refuse(limit)
            declared = declared_length(scope["headers"])
            if declared is None:
                receive = _LimitedReceive(receive, limit)
            elif declared > limit:
                receive = refuse
        return self.app(scope, receive, send)


class _Refuse:
    def __init__(self, limit: int) -> None:
        self.limit = limit

    async def __call__(self) -> dict[str, Any]:
        raise BodyTooLarge(self.limit)


class _LimitedReceive:
    __slots__ = ("limit", "receive", "received")

    def __init__(self, receive: Callable[[], Awaitable[dict[str, Any]]], limit: int) -> None:
        self.receive = receive
        self.limit = limit
        self.received = 0

    async def __call__(self) -> dict[str, Any]:
        message = await self.receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                raise BodyTooLarge(self.limit)
        return message


def declared_length(headers: Headers) -> int | None:
    """The request's ``content-length``, or None if it has none (or not a number)."""
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


# -- the data plane ----------------------------------------------------------------------------

_PARAMETER_TYPES: dict[type, type] = {
    StringConvertor: str,
    IntegerConvertor: int,
    FloatConvertor: float,
    UUIDConvertor: uuid.UUID,
}


class HotRoute(APIRoute):
    """A route answered on raw bytes by ``handler(path params, body, headers) -> (status, JSON
    bytes)``, with no pydantic per request. ``request_model``, ``response_model`` and
    ``responses`` only document it: nothing parses or validates with them."""

    def __init__(
        self,
        path: str,
        handler: HotHandler,
        *,
        methods: list[str],
        request_model: type[BaseModel] | None = None,
        **route_options: Any,
    ) -> None:
        self.handler = handler
        route_options.setdefault("name", getattr(handler, "__name__", None))
        endpoint = _documentation_endpoint(path, request_model)
        super().__init__(path, endpoint, methods=methods, **route_options)

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        """How FastAPI's router answers it (the data plane's router off): the same handler."""
        handler = self.handler

        async def answer(request: Request) -> Response:
            body = await request.body()
            status, payload = handler(request.path_params, body, request.scope["headers"])
            return Response(payload, status_code=status, media_type="application/json")

        return answer


def _documentation_endpoint(path: str, request_model: type[BaseModel] | None) -> Callable:
    """An endpoint FastAPI reads only for its signature: the path parameters with their types
    and the body's model, which is what OpenAPI shows. HotRoute never calls it."""
    _, _, convertors = compile_path(path)
    parameters = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            annotation=_PARAMETER_TYPES.get(type(convertor), str),
        )
        for name, convertor in convertors.items()
    ]
    if request_model is not None:
        parameters.append(
            inspect.Parameter("body", inspect.Parameter.KEYWORD_ONLY, annotation=request_model)
        )

    async def endpoint(**_: Any) -> None:
        raise AssertionError("a HotRoute is answered by its handler")

    endpoint.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    return endpoint


class DataPlane:
    """The innermost layer: a request for a hot route (same method, same path template as
    Starlette compiles it) is answered by its handler on raw bytes; every other request goes
    to FastAPI. The route and its path parameters go into the scope as FastAPI puts them."""

    def __init__(self, routes: Iterable[HotRoute], framework: ASGIApp) -> None:
        self.framework = framework
        self.routes: dict[str, list[tuple[Any, HotRoute, tuple[tuple[str, Any], ...]]]] = {}
        for route in routes:
            converted = tuple(
                (name, convertor)
                for name, convertor in route.param_convertors.items()
                if not isinstance(convertor, StringConvertor)
            )
            for method in route.methods or ():
                self.routes.setdefault(method, []).append((route.path_regex, route, converted))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # one coroutine per hot request: matching is a plain call, reading and answering inline
        route = self.match(scope) if scope["type"] == "http" else None
        if route is None:
            await self.framework(scope, receive, send)
            return
        headers = None
        try:
            message = await receive()
            body = message.get("body", b"")
            while message.get("more_body", False):
                message = await receive()
                body += message.get("body", b"")
            if message["type"] == "http.disconnect":
                return
            status, payload = route.handler(scope["path_params"], body, scope["headers"])
        except HTTPException as exc:  # as FastAPI's exception handlers answer its routes
            status, payload, headers = http_error(exc)
        if headers is None:
            raw = [JSON_CONTENT_TYPE, (b"content-length", str(len(payload)).encode())]
            await send({"type": "http.response.start", "status": status, "headers": raw})
            await send({"type": "http.response.body", "body": payload})
        else:
            await send_json(send, status, payload, headers)

    def match(self, scope: dict[str, Any]) -> HotRoute | None:
        """The hot route of this request, if any, with ``route`` and ``path_params`` put in the
        scope as FastAPI's router puts them."""
        candidates = self.routes.get(scope["method"])
        if not candidates:
            return None
        path = route_path(scope)
        for regex, route, converted in candidates:
            match = regex.match(path)
            if match is not None:
                params = match.groupdict()
                for name, convertor in converted:
                    params[name] = convertor.convert(params[name])
                scope["route"] = route
                scope["path_params"] = params
                return route
        return None


def route_path(scope: dict[str, Any]) -> str:
    """The path routes match: without the root path (as Starlette routes see it)."""
    path: str = scope["path"]
    root = scope.get("root_path")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] == "/":
        return path[len(root) :]
    return path


# -- the application ---------------------------------------------------------------------------


class ServiceApp(FastAPI):
    """FastAPI behind the service's one middleware chain, with hot routes in front of its
    router. Routers, dependencies, exception handlers, ``state``, OpenAPI: FastAPI's own."""

    def __init__(
        self,
        *args: Any,
        metrics: Metrics,
        max_body_bytes: int,
        fast_router: bool = True,
        max_upload_bytes: int | None = None,
        **kwargs: Any,
    ) -> None:
        chain = list(kwargs.pop("middleware", None) or [])
        kwargs.setdefault("telemetry", FRAMEWORK_TELEMETRY_OFF)
        super().__init__(*args, **kwargs)
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes or max_body_bytes
        self.upload_paths: list[str] = []
        self.fast_router = fast_router
        self.hot_routes: list[HotRoute] = []
        self.chain_middleware: list[Middleware] = chain
        self.chain: ASGIApp | None = None
        self.gated: frozenset[str] | None = None  # the ungated paths, when gated
        self.secured: frozenset[str] | None = None  # the open paths, when auth is on
        self.exception_handlers[HTTPException] = _http_exception_handler
        self.exception_handlers[RequestValidationError] = _validation_handler

    def add_middleware(self, middleware_class: Any, *args: Any, **kwargs: Any) -> None:
        """Put a middleware in the chain, where it sees every request, hot route or not: inside
        the body limit, outside the data plane; the last one added runs first (as in Starlette).
        ``@app.middleware("http")`` comes here too."""
        if self.chain is not None:
            raise RuntimeError("Cannot add middleware after an application has started")
        self.chain_middleware.insert(0, Middleware(middleware_class, *args, **kwargs))

    def gate_until_started(self, service: str, open_paths: Iterable[str] = ()) -> None:
        """Answer 503 ``starting`` on every route but the shell's (and ``open_paths``) until
        ``state.context`` is set (``StartingGate``); documented on every such route."""
        self.state.context = None
        self.gated = frozenset(SHELL_PATHS | set(open_paths))
        self.add_middleware(StartingGate, service=service, open_paths=open_paths)

    def allow_uploads(self, *path_patterns: str) -> None:
        """Requests whose path fully matches one of these regular expressions (dataset and
        artifact uploads) may carry up to ``max_upload_bytes`` instead of ``max_body_bytes``."""
        if self.chain is not None:
            raise RuntimeError("Cannot allow uploads after an application has started")
        self.upload_paths.extend(path_patterns)

    def add_hot_route(
        self, method: str, path: str, handler: HotHandler, **route_options: Any
    ) -> HotRoute:
        """Answer ``method path`` with ``handler`` on raw bytes. ``route_options`` document it
        (``request_model``, ``response_model``, ``responses``, ``summary``, ``tags``, ...)."""
        if self.chain is not None:
            raise RuntimeError("Cannot add a hot route after an application has started")
        route = HotRoute(path, handler, methods=[method], **route_options)
        self.router.routes.append(route)
        self.hot_routes.append(route)
        self.openapi_schema = None
        return route

    def build_chain(self) -> ASGIApp:
        framework = super().__call__
        app: ASGIApp = DataPlane(self.hot_routes if self.fast_router else (), framework)
        for cls, args, kwargs in reversed(self.chain_middleware):
            app = cls(app, *args, **kwargs)
        uploads = re.compile("|".join(f"(?:{p})" for p in self.upload_paths))
        app = BodyLimitMiddleware(
            app, self.max_body_bytes, uploads if self.upload_paths else None, self.max_upload_bytes
        )
        app = ErrorMiddleware(app)
        return RequestMetricsMiddleware(app, self.metrics)

    def build_middleware_stack(self) -> ASGIApp:
        """FastAPI's own stack, minus its ServerErrorMiddleware: an error no handler answers
        goes up the chain to ErrorMiddleware (one 500, in the error shape, logged once). It has
        no user middleware: ``add_middleware`` puts them in the chain."""
        stack = super().build_middleware_stack()
        return stack.app if isinstance(stack, ServerErrorMiddleware) else stack

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        scope["app"] = self
        if self.chain is None:
            self.chain = self.build_chain()
        await self.chain(scope, receive, send)

    def openapi(self) -> dict[str, Any]:
        return document_chain_errors(super().openapi(), gated=self.gated, secured=self.secured)


SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "an API key or a JWT"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}


def document_chain_errors(
    doc: dict[str, Any],
    *,
    gated: frozenset[str] | None = None,
    secured: frozenset[str] | None = None,
) -> dict[str, Any]:
    """Add to an OpenAPI document the errors the chain answers on any route it applies to, in
    ``ErrorBody``: 500 everywhere, 413 where there is a request body, and the 422 FastAPI
    documents for a route with parameters (its own body shape replaced); with auth on
    (``secured``: the open paths), 401 and 403 and the credentials on every other route.
    Idempotent."""
    if secured is not None:
        doc.setdefault("components", {}).setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault(
        "ErrorBody", ErrorBody.model_json_schema(ref_template=REF_TEMPLATE, mode="serialization")
    )
    for path, path_item in doc.get("paths", {}).items():
        for operation in path_item.values():
            for media in operation.get("requestBody", {}).get("content", {}).values():
                schemas.update(media.get("schema", {}).pop("$defs", {}))  # from json_body
            responses = operation.setdefault("responses", {})
            if "HTTPValidationError" in json.dumps(responses.get("422", {})):
                responses["422"] = _error_doc("parameters or body not as documented")
            if "requestBody" in operation:
                responses.setdefault("413", _error_doc("request body over the service's limit"))
            responses.setdefault("500", _error_doc("unexpected error (logged by the service)"))
            if gated is not None and path not in gated:
                responses.setdefault("503", _error_doc("starting: the service is not started yet"))
            if secured is not None and path not in secured:
                operation["security"] = [{"bearer": []}, {"apiKey": []}]
                responses.setdefault("401", _error_doc("unauthenticated: no or bad credentials"))
                responses.setdefault("403", _error_doc("forbidden: the route needs another role"))
    if "HTTPValidationError" not in json.dumps(doc.get("paths", {})):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
    return doc


def _error_doc(description: str) -> dict[str, Any]:
    schema = {"$ref": ERROR_SCHEMA_REF}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, bool] = {}


def create_app(
    *,
    title: str,
    description: str,
    metrics: Metrics,
    readiness: ReadinessCheck,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[Any]] | None = None,
    max_body_bytes: int = 1_000_000,
    version: str = "0.1.0",
    fast_router: bool = True,
    max_upload_bytes: int | None = None,
) -> ServiceApp:
    app = ServiceApp(
        title=title,
        description=description,
        version=version,
        lifespan=lifespan,
        metrics=metrics,
        max_body_bytes=max_body_bytes,
        fast_router=fast_router,
        max_upload_bytes=max_upload_bytes,
    )

    @app.get("/health/live", tags=["health"], summary="The process is up")
    async def live() -> dict[str, str]:
        return {"status": "live"}

    @app.get(
        "/health/ready",
        tags=["health"],
        summary="Broker and stores answer",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "a check failed (see checks)"}},
    )
    async def ready() -> Response:
        checks = await readiness()
        ok = all(checks.values())
        body = {"status": "ready" if ok else "not ready", "checks": checks}
        return Response(orjson.dumps(body), 200 if ok else 503, media_type="application/json")

    @app.get(
        "/metrics",
        tags=["health"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}},
    )
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
