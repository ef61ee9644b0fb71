"""The HTTP shell: one middleware chain in front of hot routes and FastAPI routes alike, the one
error body, and the OpenAPI document. The chain tests run twice: with the data plane's router
finding the hot route, and with FastAPI's router finding it."""

from __future__ import annotations

import random

import httpx
import orjson
import pytest
import structlog
from fastapi import APIRouter, HTTPException, Request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel
from starlette.middleware import Middleware

from modelbus_contracts.api import ErrorBody
from modelbus_embedded.testing import service_app
from modelbus_platform.http import (
    ApiError,
    ServiceApp,
    create_app,
    error_payload,
    error_responses,
    send_json,
)
from modelbus_platform.metrics import LATENCY_BUCKETS, HttpMetrics, Metrics

HOT = "/things/{name}/echo"


class Thing(BaseModel):
    size: int


class Echo(BaseModel):
    name: str
    size: int


class Service:
    """An app with one hot route and a few FastAPI routes, and what its handler saw."""

    def __init__(self, fast_router: bool = True, max_body_bytes: int = 100) -> None:
        self.metrics = Metrics("svc")
        self.calls: list[bytes] = []
        self.ready = True

        async def readiness() -> dict[str, bool]:
            return {"broker": self.ready}

        self.app = create_app(
            title="svc",
            description="d",
            metrics=self.metrics,
            readiness=readiness,
            max_body_bytes=max_body_bytes,
            fast_router=fast_router,
        )
        self.app.add_hot_route(
            "POST",
            HOT,
            self.echo,
            request_model=Thing,
            response_model=Echo,
            status_code=201,
            responses=error_responses({409: "taken"}),
        )
        self.app.add_hot_route("GET", "/things/{n:int}", self.number)

        @self.app.post("/things/{name}/other", responses=error_responses({404: "no such thing"}))
        async def other(name: str, body: Thing) -> Echo:
            if name == "missing":
                raise HTTPException(404, "no such thing")
            return Echo(name=name, size=body.size)

        @self.app.get("/boom")
        async def boom() -> dict:
            raise RuntimeError("broken route")

    def echo(self, params: dict, body: bytes, headers: list) -> tuple[int, bytes]:
        self.calls.append(body)
        if body == b"boom":
            raise RuntimeError("broken handler")
        if body == b"taken":
            raise ApiError(409, "that name is taken", "name_taken")
        return 201, orjson.dumps({"name": params["name"], "size": len(body)})

    def number(self, params: dict, body: bytes, headers: list) -> tuple[int, bytes]:
        return 200, orjson.dumps({"n": params["n"], "type": type(params["n"]).__name__})

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(self.app), base_url="http://t")

    def counted(self, method: str, route: str, status: int) -> float:
        labels = {"method": method, "route": route, "status": str(status)}
        value = self.metrics.registry.get_sample_value("modelbus_http_requests_total", labels)
        return value or 0.0


@pytest.fixture(params=["data_plane_router", "fastapi_router"])
def service(request) -> Service:
    return Service(fast_router=request.param == "data_plane_router")


def assert_error(response: httpx.Response, status: int, reason: str) -> dict:
    """The one error body: ``ErrorBody``, nothing else, as JSON."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) <= {"error", "reason", "details"}
    assert ErrorBody.model_validate(body).reason == reason
    return body


class Gate:
    """A middleware as authentication will be one: it sees every request, refuses those without
    a token (401, the error shape) and tags the answers of the others."""

    def __init__(self, app, seen: list[str]) -> None:
        self.app = app
        self.seen = seen

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.seen.append(scope["path"])
        if (b"x-token", b"secret") not in scope["headers"]:
            await send_json(send, 401, error_payload("no token", "unauthenticated"))
            return

        async def tagged(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message["headers"], (b"x-gate", b"passed")]
            await send(message)

        await self.app(scope, receive, tagged)


async def test_a_middleware_in_the_chain_covers_hot_and_fastapi_routes_alike(service):
    seen: list[str] = []
    service.app.add_middleware(Gate, seen=seen)
    token = {"x-token": "secret"}
    async with service.client() as client:
        hot_refused = await client.post("/things/a/echo", content=b"12")
        framework_refused = await client.post("/things/a/other", json={"size": 2})
        hot = await client.post("/things/a/echo", content=b"12", headers=token)
        framework = await client.post("/things/a/other", json={"size": 2}, headers=token)

    assert_error(hot_refused, 401, "unauthenticated")
    assert_error(framework_refused, 401, "unauthenticated")
    assert service.calls == [b"12"]  # the refused request never reached the handler
    assert (hot.status_code, hot.json()) == (201, {"name": "a", "size": 2})
    assert (framework.status_code, framework.json()) == (200, {"name": "a", "size": 2})
    assert hot.headers["x-gate"] == framework.headers["x-gate"] == "passed"
    # once per request: FastAPI does not run the chain's middleware a second time
    assert seen == ["/things/a/echo", "/things/a/other"] * 2
    assert service.counted("POST", HOT, 201) == 1
    assert service.counted("POST", "unmatched", 401) == 2  # refused before any routing


async def test_a_function_middleware_and_one_that_raises_cover_hot_routes_too(service):
    @service.app.middleware("http")
    async def request_id(request: Request, call_next):
        response = await call_next(request)
        response.headers["x-request-id"] = "r-1"
        return response

    class Forbid:
        def __init__(self, app) -> None:
            self.app = app

        async def __call__(self, scope, receive, send) -> None:
            if scope["type"] == "http" and scope["path"].startswith("/things/private"):
                raise ApiError(403, "private", "forbidden_thing")
            await self.app(scope, receive, send)

    service.app.add_middleware(Forbid)
    async with service.client() as client:
        hot = await client.post("/things/a/echo", content=b"1")
        framework = await client.post("/things/a/other", json={"size": 1})
        forbidden = await client.post("/things/private/echo", content=b"1")

    assert hot.headers["x-request-id"] == framework.headers["x-request-id"] == "r-1"
    assert_error(forbidden, 403, "forbidden_thing")
    assert service.calls == [b"1"]


async def test_errors_have_one_shape_on_every_path(service):
    async with service.client() as client:
        with structlog.testing.capture_logs() as logs:
            hot_bug = await client.post("/things/a/echo", content=b"boom")
            route_bug = await client.get("/boom")
        taken = await client.post("/things/a/echo", content=b"taken")
        missing = await client.post("/things/missing/other", json={"size": 1})
        invalid = await client.post("/things/a/other", json={"size": "big"})
        not_json = await client.post("/things/a/other", content=b"[1,")
        not_utf8 = await client.post(  # FastAPI's own answer: 400, which no route documents
            "/things/a/other", content=b"\xff[", headers={"content-type": "application/json"}
        )
        unknown = await client.get("/nowhere")
        wrong_method = await client.get("/things/a/echo")

    for response in (hot_bug, route_bug):
        body = assert_error(response, 500, "internal_error")
        assert "RuntimeError" in body["error"] and "broken" not in body["error"]
    assert [e["event"] for e in logs] == ["http.unhandled_error"] * 2
    assert logs[0]["route"] == HOT and logs[1]["route"] == "/boom"
    assert assert_error(taken, 409, "name_taken")["error"] == "that name is taken"
    assert assert_error(missing, 404, "not_found")["error"] == "no such thing"
    details = assert_error(invalid, 422, "validation_error")["details"]
    assert details[0]["loc"] == ["body", "size"] and details[0]["type"] == "int_parsing"
    assert "body.size" in invalid.json()["error"]
    assert assert_error(not_json, 422, "validation_error")["details"]
    assert assert_error(not_utf8, 422, "validation_error")["error"] == "the body is not UTF-8 JSON"
    assert assert_error(unknown, 404, "not_found")["error"] == "Not Found"
    assert_error(wrong_method, 405, "method_not_allowed")
    assert wrong_method.headers["allow"] == "POST"
    assert service.counted("POST", HOT, 500) == 1
    assert service.counted("GET", "/boom", 500) == 1


async def test_oversized_bodies_are_413_under_their_route(service):
    async def chunks():  # no content-length: the limit holds as the body arrives
        for _ in range(5):
            yield b"x" * 30

    async with service.client() as client:
        ok = await client.post("/things/a/echo", content=b"x" * 100)
        declared = await client.post("/things/a/echo", content=b"x" * 101)
        streamed = await client.post("/things/a/echo", content=chunks())
        framework = await client.post("/things/a/other", content=b'{"size": 1' + b" " * 100 + b"}")
        framework_streamed = await client.post("/things/a/other", content=chunks())

    assert ok.status_code == 201
    for response in (declared, streamed, framework, framework_streamed):
        assert "over 100 bytes" in assert_error(response, 413, "body_too_large")["error"]
    assert service.calls == [b"x" * 100]  # oversized bodies never reach the handler
    assert service.counted("POST", HOT, 413) == 2
    assert service.counted("POST", "/things/{name}/other", 413) == 2


async def test_upload_routes_take_the_upload_limit_and_only_they():
    svc = Service(max_body_bytes=100)
    svc.app.max_upload_bytes = 1000
    svc.app.allow_uploads(r"/things/[^/]+/echo")

    async def chunks(n: int):
        for _ in range(n):
            yield b"x" * 100

    async with svc.client() as client:
        upload = await client.post("/things/a/echo", content=b"x" * 900)
        streamed = await client.post("/things/a/echo", content=chunks(9))
        too_big = await client.post("/things/a/echo", content=b"x" * 1001)
        too_big_streamed = await client.post("/things/a/echo", content=chunks(11))
        elsewhere = await client.post("/things/a/other", content=b'{"size": 1' + b" " * 200 + b"}")

    assert (upload.status_code, streamed.status_code) == (201, 201)
    for response in (too_big, too_big_streamed):
        assert "over 1000 bytes" in assert_error(response, 413, "body_too_large")["error"]
    assert "over 100 bytes" in assert_error(elsewhere, 413, "body_too_large")["error"]
    assert svc.calls == [b"x" * 900, b"x" * 900]


async def test_hot_route_path_parameters_are_converted_as_starlette_does(service):
    async with service.client() as client:
        number = await client.get("/things/42")
        not_a_number = await client.get("/things/x42")

    assert number.json() == {"n": 42, "type": "int"}
    assert_error(not_a_number, 404, "not_found")


async def test_health_ready_and_metrics(service):
    async with service.client() as client:
        assert (await client.get("/health/live")).json() == {"status": "live"}
        ready = await client.get("/health/ready")
        assert ready.status_code == 200 and ready.json()["checks"]["broker"] is True
        await client.post("/things/a/other", json={"size": 1})
        metrics = (await client.get("/metrics")).text
        service.ready = False
        not_ready = await client.get("/health/ready")

    expected = (
        'modelbus_http_requests_total{method="POST",route="/things/{name}/other",status="200"}'
    )
    assert f"{expected} 1.0" in metrics
    assert not_ready.status_code == 503 and not_ready.json()["checks"]["broker"] is False
    assert service.counted("GET", "/health/ready", 503) == 1


async def test_unknown_methods_share_one_metric_label():
    service = Service()
    async with service.client() as client:
        await client.request("BREW", "/things/a/echo")
    assert service.counted("OTHER", "/things/{name}/echo", 405) == 1


def test_the_chain_is_fixed_once_the_app_has_started():
    app = Service().app
    app.chain = app.build_chain()
    with pytest.raises(RuntimeError):
        app.add_middleware(Gate, seen=[])
    with pytest.raises(RuntimeError):
        app.add_hot_route("GET", "/late", lambda params, body, headers: (200, b"{}"))


def test_openapi_documents_hot_routes_and_every_error_in_the_error_shape():
    doc = Service().app.openapi()
    error = {"$ref": "#/components/schemas/ErrorBody"}
    hot = doc["paths"][HOT]["post"]
    assert hot["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Thing"
    }
    assert hot["responses"]["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Echo"
    }
    assert set(hot["responses"]) == {"201", "409", "413", "422", "500"}
    number = doc["paths"]["/things/{n}"]["get"]
    assert number["parameters"][0]["schema"]["type"] == "integer"
    assert set(number["responses"]) == {"200", "422", "500"}
    other = doc["paths"]["/things/{name}/other"]["post"]
    assert set(other["responses"]) == {"200", "404", "413", "422", "500"}
    assert set(doc["paths"]["/boom"]["get"]["responses"]) == {"200", "500"}
    for path in doc["paths"].values():
        for operation in path.values():
            for status, response in operation["responses"].items():
                if status >= "400" and not operation["operationId"].startswith("ready"):
                    assert response["content"]["application/json"]["schema"] == error, status
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert doc["components"]["schemas"]["ErrorBody"]["required"] == ["error", "reason"]
    assert Service().app.openapi() == Service().app.openapi()  # stable, and idempotent


@pytest.mark.parametrize(
    ("message", "reason", "details"),
    [("m", "r", None), ('é "quoted"', "not_found", [{"loc": ["body", 0], "msg": "x"}])],
)
def test_the_hand_made_error_body_is_the_model(message, reason, details):
    raw = error_payload(message, reason, details)
    assert orjson.loads(raw) == ErrorBody(error=message, reason=reason, details=details).model_dump(
        exclude_none=True
    )


def test_middleware_given_to_the_constructor_goes_in_the_chain_not_to_fastapi():
    gate = Middleware(Gate, seen=[])
    app = ServiceApp(title="t", metrics=Metrics("t"), max_body_bytes=10, middleware=[gate])
    assert app.user_middleware == [] and app.chain_middleware == [gate]


async def test_api_tests_fail_an_answer_whose_status_the_route_does_not_document():
    router = APIRouter()

    @router.get("/tea", responses=error_responses({409: "no tea left"}))
    async def tea(kind: str = "green") -> dict:
        if kind == "none":
            raise ApiError(409, "no tea left", "no_tea")
        raise ApiError(418, "I'm a teapot", "teapot")

    app = service_app(router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        assert (await c.get("/tea", params={"kind": "none"})).status_code == 409
        with pytest.raises(AssertionError, match="GET /tea answered 418"):
            await c.get("/tea")


def test_request_metrics_expose_what_prometheus_client_would_expose():
    """``HttpMetrics`` counts in plain numbers; prometheus_client's Counter and Histogram, fed
    the same requests, are its oracle (the exposition text, bar the _created series)."""
    fast_registry, reference_registry = CollectorRegistry(), CollectorRegistry()
    fast = HttpMetrics(fast_registry)
    requests = Counter(
        "modelbus_http_requests_total",
        "HTTP requests",
        ["method", "route", "status"],
        registry=reference_registry,
    )
    latency = Histogram(
        "modelbus_http_request_seconds",
        "HTTP request latency",
        ["method", "route"],
        buckets=LATENCY_BUCKETS,
        registry=reference_registry,
    )
    rng = random.Random(9)
    on_a_bound = [*LATENCY_BUCKETS, 0.0, 60.0]
    for _ in range(3000):
        method, route = rng.choice(["GET", "POST"]), rng.choice(["/a/{x}", "unmatched"])
        status = rng.choice([200, 404, 500])
        seconds = rng.choice([rng.expovariate(200), rng.choice(on_a_bound)])
        fast.observe(method, route, status, seconds)
        requests.labels(method, route, str(status)).inc()
        latency.labels(method, route).observe(seconds)

    def exposition(registry: CollectorRegistry) -> list[str]:
        text = generate_latest(registry).decode()
        return sorted(line for line in text.splitlines() if "_created" not in line)

    assert exposition(fast_registry) == exposition(reference_registry)
