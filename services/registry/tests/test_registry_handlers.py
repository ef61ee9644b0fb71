"""Handlers behind the bus's consume path (no broker): decode, dedupe on event_id, handle."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import httpx

from modelbus_contracts import Event, ModelPromoted, ModelRegistered, encode
from modelbus_platform.bus import EventBus, MemoryProcessedEvents
from modelbus_platform.metrics import Metrics
from modelbus_registry import handlers
from modelbus_registry.bootstrap import build_app
from modelbus_registry.config import RegistrySettings

MODEL = "upsell"


def raw(event: Event, offset: int = 0) -> SimpleNamespace:
    record = encode(event)
    headers = [(k, v.encode()) for k, v in record.headers.items()]
    return SimpleNamespace(
        topic=record.topic,
        partition=0,
        offset=offset,
        key=record.key,
        value=record.value,
        headers=headers,
    )


async def test_handlers_register_and_promote_once_per_event_id(wired, mk):
    bus = EventBus(
        "127.0.0.1:1",
        service="registry",
        metrics=Metrics("registry"),
        processed=MemoryProcessedEvents(),
    )
    on_trained = partial(handlers.model_trained, wired.service)
    on_evaluated = partial(handlers.model_evaluated, wired.service)
    trained = mk.trained(MODEL, await mk.put_artifact(wired.store, MODEL))
    for offset in (0, 1):  # the broker delivers it twice
        await bus.process(type(trained), "registry", on_trained, raw(trained, offset))
    (registered,) = wired.published.of(ModelRegistered)
    evaluation = mk.evaluated(MODEL, registered.version, None, cause=registered)
    for offset in (0, 1):
        await bus.process(type(evaluation), "registry", on_evaluated, raw(evaluation, offset))
    (promoted,) = wired.published.of(ModelPromoted)
    assert promoted.correlation_id == trained.correlation_id
    assert (await wired.service.aliases(MODEL)).champion == 1


async def test_app_builds_without_connecting_and_is_not_ready_before_start():
    app = build_app(RegistrySettings(kafka_bootstrap="127.0.0.1:1", mongo_uri="mongodb://x:1"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry") as http:
        ready = await http.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"] == {
            "bus": False,
            "dependencies": False,
            "consumers": False,
            "mongo": False,
            "object_store": False,
        }
        assert (await http.get("/models")).status_code == 503
        assert (await http.get("/health/live")).status_code == 200


def test_settings_defaults():
    settings = RegistrySettings()
    assert (settings.service_name, settings.http_port, settings.consumer_group) == (
        "registry",
        8001,
        "registry",
    )
