"""Unit tests of the shared plumbing: the bus's safety net and the HTTP shell, on fakes."""

from __future__ import annotations

import uuid

import httpx
import orjson
import pytest

from modelbus_contracts import LabelObserved, encode
from modelbus_embedded.testing import ConsumedRecord
from modelbus_platform.bus import EventBus, MemoryProcessedEvents
from modelbus_platform.http import create_app
from modelbus_platform.metrics import Metrics


class FakeBroker:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, dict]] = []

    async def publish(self, value, topic, key=None, headers=None):
        self.published.append((topic, value, headers or {}))


def make_bus() -> tuple[EventBus, FakeBroker]:
    bus = EventBus(
        "127.0.0.1:1",
        service="t",
        metrics=Metrics("t"),
        processed=MemoryProcessedEvents(),
        retries=2,
        backoff_s=0,
    )
    fake = FakeBroker()
    bus.broker = fake  # type: ignore[assignment]
    return bus, fake


def raw_of(event, value: bytes | None = None, offset: int = 0) -> ConsumedRecord:
    record = encode(event)
    return ConsumedRecord(
        record.topic,
        0,
        offset,
        record.key,
        value if value is not None else record.value,
        [(k, v.encode()) for k, v in record.headers.items()],
    )


async def test_handler_runs_once_per_event_id():
    bus, fake = make_bus()
    seen = []

    async def handler(event):
        seen.append(event.event_id)

    event = LabelObserved(model_name="m", prediction_id="p", label=1)
    for offset in range(3):
        await bus.process(LabelObserved, "g", handler, raw_of(event, offset=offset))
    assert seen == [event.event_id]
    assert fake.published == []


async def test_transient_failure_is_retried_then_succeeds():
    bus, fake = make_bus()
    calls = 0

    async def flaky(event):
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("store blip")

    await bus.process(
        LabelObserved, "g", flaky, raw_of(LabelObserved(model_name="m", prediction_id="p", label=1))
    )
    assert calls == 3
    assert fake.published == []


async def test_persistent_failure_is_dead_lettered_with_reason_and_attempts():
    bus, fake = make_bus()

    async def broken(event):
        raise ValueError("cannot handle")

    event = LabelObserved(model_name="m", prediction_id="p", label=1)
    await bus.process(LabelObserved, "g", broken, raw_of(event))
    topic, value, headers = fake.published[0]
    assert topic == "label.observed.v1.dlq"
    assert value == encode(event).value
    assert headers["x-dlq-reason"] == "handler: ValueError: cannot handle"
    assert headers["x-dlq-attempts"] == "3"
    assert headers["ce_id"] == str(event.event_id)
    # not marked processed: a replay after a fix would be handled
    assert not await bus.processed.seen("g", event.event_id)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"not json", "not valid JSON"),
        (b'{"model_name":"m","label":1}', "prediction_id"),
        (b'{"model_name":"m","prediction_id":"p","label":NaN}', "not valid JSON"),
    ],
)
async def test_malformed_messages_are_dead_lettered_without_calling_the_handler(value, reason):
    bus, fake = make_bus()
    called = False

    async def handler(event):
        nonlocal called
        called = True

    event = LabelObserved(model_name="m", prediction_id="p", label=1)
    await bus.process(LabelObserved, "g", handler, raw_of(event, value=value))
    assert not called
    assert reason in fake.published[0][2]["x-dlq-reason"]
    assert fake.published[0][2]["x-dlq-attempts"] == "0"


async def test_wrong_event_type_on_a_topic_is_dead_lettered():
    bus, fake = make_bus()
    raw = raw_of(LabelObserved(model_name="m", prediction_id="p", label=1))
    raw.headers = [(k, b"prediction.made.v1" if k == "ce_type" else v) for k, v in raw.headers]

    async def handler(event):
        raise AssertionError("must not be called")

    await bus.process(LabelObserved, "g", handler, raw)
    assert "expected label.observed.v1" in fake.published[0][2]["x-dlq-reason"]


def _app(ready: bool = True):
    metrics = Metrics("svc")

    async def readiness():
        return {"broker": ready, "mongo": True}

    app = create_app(
        title="svc", description="d", metrics=metrics, readiness=readiness, max_body_bytes=100
    )

    @app.post("/echo")
    async def echo(body: dict) -> dict:
        return body

    return app


async def test_health_ready_and_metrics():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(_app()), base_url="http://t") as c:
        assert (await c.get("/health/live")).json() == {"status": "live"}
        ready = await c.get("/health/ready")
        assert ready.status_code == 200 and ready.json()["checks"]["broker"] is True
        await c.post("/echo", json={"a": 1})
        metrics = (await c.get("/metrics")).text
        assert (
            'modelbus_http_requests_total{method="POST",route="/echo",status="200"} 1.0' in metrics
        )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(_app(False)), base_url="http://t"
    ) as c:
        not_ready = await c.get("/health/ready")
        assert not_ready.status_code == 503
        assert not_ready.json()["checks"]["broker"] is False


async def test_oversized_body_is_413_and_bad_body_is_422_with_reason():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(_app()), base_url="http://t") as c:
        big = await c.post(
            "/echo", content=b"{" + b" " * 200 + b"}", headers={"content-type": "application/json"}
        )
        assert big.status_code == 413
        assert "100 bytes" in big.json()["detail"]

        async def chunks():
            yield b'{"a": "'
            yield b"x" * 200
            yield b'"}'

        streamed = await c.post(
            "/echo", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413
        bad = await c.post("/echo", content=b"[1,", headers={"content-type": "application/json"})
        assert bad.status_code == 422
        assert bad.json()["detail"]


def test_event_ids_are_unique_uuids():
    a, b = (LabelObserved(model_name="m", prediction_id="p", label=0) for _ in range(2))
    assert isinstance(a.event_id, uuid.UUID) and a.event_id != b.event_id


def fast_app(max_body_bytes: int = 100):
    metrics = Metrics("fast")

    async def readiness() -> dict[str, bool]:
        return {"bus": True}

    app = create_app(
        title="t",
        description="t",
        metrics=metrics,
        readiness=readiness,
        max_body_bytes=max_body_bytes,
    )
    calls: list[tuple[dict, bytes]] = []

    def echo(params, body, headers):
        calls.append((params, body))
        if body == b"boom":
            raise RuntimeError("broken handler")
        return 201, orjson.dumps({"name": params["name"], "size": len(body)})

    app.add_fast_route("POST", "/things/{name}/echo", echo)

    @app.post("/things/{name}/other")
    async def other(name: str) -> dict[str, str]:
        return {"framework": name}

    client = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t")
    return client, metrics, calls


def requests_counted(metrics: Metrics, route: str, status: str) -> float:
    labels = {"method": "POST", "route": route, "status": status}
    return metrics.registry.get_sample_value("modelbus_http_requests_total", labels) or 0.0


async def test_a_fast_route_answers_before_the_framework_with_metrics_and_limits():
    client, metrics, calls = fast_app()
    async with client:
        ok = await client.post("/things/a.b/echo", content=b"12345")
        other = await client.post("/things/a/other")
        wrong_method = await client.get("/things/a/echo")
        too_big = await client.post("/things/a/echo", content=b"x" * 101)

        async def stream():  # no content-length: the limit holds as the body arrives
            for _ in range(5):
                yield b"x" * 30

        streamed = await client.post("/things/a/echo", content=stream())
        boom = await client.post("/things/a/echo", content=b"boom")

    assert (ok.status_code, ok.json()) == (201, {"name": "a.b", "size": 5})
    assert ok.headers["content-type"] == "application/json"
    assert other.json() == {"framework": "a"}  # other paths go through FastAPI
    assert wrong_method.status_code == 404  # another method: the framework answers
    assert too_big.status_code == 413 and "over 100 bytes" in too_big.json()["detail"]
    assert streamed.status_code == 413
    assert boom.status_code == 500 and "broken handler" in boom.json()["error"]
    assert boom.json()["reason"] == "internal_error"
    assert [body for _, body in calls] == [b"12345", b"boom"]  # oversized never reach it
    assert requests_counted(metrics, "/things/{name}/echo", "201") == 1
    assert requests_counted(metrics, "/things/{name}/echo", "413") == 2
    assert requests_counted(metrics, "/things/{name}/echo", "500") == 1
    seconds = metrics.registry.get_sample_value(
        "modelbus_http_request_seconds_count", {"method": "POST", "route": "/things/{name}/echo"}
    )
    assert seconds == 4


def test_route_templates_match_one_path_segment_per_parameter():
    from modelbus_platform.http import compile_template

    pattern = compile_template("/v2/models/{name}/versions/{version}/infer")

    assert pattern.match("/v2/models/churn/versions/3/infer").groupdict() == {
        "name": "churn",
        "version": "3",
    }
    assert pattern.match("/v2/models/a/b/versions/3/infer") is None
    assert pattern.match("/v2/models/churn/versions/3/infer/x") is None
