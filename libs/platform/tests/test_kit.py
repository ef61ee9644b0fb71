"""The service kit: a declared service becomes an app with its consumer groups, readiness,
lifecycle and declared publications (unit), and runs on the real broker and MongoDB-wire
server in the declared order (integration)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import APIRouter, Request

from modelbus_contracts import LabelObserved, ModelPromoted, PredictionMade
from modelbus_platform.bus import UndeclaredEvent
from modelbus_platform.kit import Kit, Resource, ServiceSpec, Subscription, Task, Wiring, build_app
from modelbus_platform.settings import ServiceSettings


class DemoSettings(ServiceSettings):
    service_name: str = "demo"
    consumer_group: str = "demo-group"


class Journal:
    """What the demo service saw and did, in order."""

    def __init__(self) -> None:
        self.steps: list[str] = []
        self.events: list[object] = []


async def on_promoted(journal: Journal, event: ModelPromoted) -> None:
    journal.events.append(event)


async def on_telemetry(journal: Journal, events: list) -> None:
    journal.events.extend(events)


def demo_wire(kit: Kit) -> Wiring:
    journal = Journal()

    def step(name: str):
        async def run() -> None:
            journal.steps.append(name)

        return run

    async def forever() -> None:
        journal.steps.append("task:start")
        await asyncio.Event().wait()

    router = APIRouter()

    @router.get("/journal")
    async def read(request: Request) -> list[str]:
        return request.app.state.context.steps

    return Wiring(
        context=journal,
        routers=[router],
        resources=[
            Resource("first", start=step("first:start"), stop=step("first:stop")),
            Resource("second", start=step("second:start"), stop=step("second:stop")),
        ],
        tasks=[Task("worker", forever, stop=step("task:stop"))],
    )


SPEC = ServiceSpec(
    name="demo",
    title="demo",
    description="a declared service",
    settings=DemoSettings,
    wire=demo_wire,
    publishes=(ModelPromoted,),
    subscriptions=(
        Subscription(ModelPromoted, "{consumer_group}-control-{instance_id}", on_promoted),
        Subscription(PredictionMade, "{consumer_group}", on_telemetry, batch=True),
        Subscription(LabelObserved, "{consumer_group}", on_telemetry, batch=True),
    ),
)


def groups_of(app) -> dict[str, tuple[str, bool]]:
    return {
        topic: (group, route.batch)
        for group, routes in app.state.bus._groups.items()
        for topic, route in routes.items()
    }


def test_subscriptions_become_consumer_groups_with_settings_in_their_names():
    app = build_app(SPEC, DemoSettings(instance_id="i-7", kafka_bootstrap="127.0.0.1:1"))
    assert groups_of(app) == {
        "model.promoted.v1": ("demo-group-control-i-7", False),
        "prediction.made.v1": ("demo-group", True),
        "label.observed.v1": ("demo-group", True),
    }


def test_the_documented_group_shows_defaults_and_a_per_replica_placeholder():
    control, telemetry, _ = SPEC.subscriptions
    assert control.documented_group(DemoSettings) == "demo-group-control-{instance}"
    assert telemetry.documented_group(DemoSettings) == "demo-group"


async def test_the_bus_refuses_to_publish_what_the_spec_does_not_declare():
    app = build_app(SPEC, DemoSettings(kafka_bootstrap="127.0.0.1:1"))
    with pytest.raises(UndeclaredEvent, match=r"label\.observed\.v1"):
        await app.state.bus.publish(LabelObserved(model_name="m", prediction_id="p", label=1))


async def test_not_ready_and_no_context_before_the_lifespan_starts():
    app = build_app(SPEC, DemoSettings(kafka_bootstrap="127.0.0.1:1"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        ready = await c.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"bus": False, "dependencies": False, "consumers": False}
    assert app.state.context is None


@pytest.mark.integration
async def test_resources_then_consumers_then_tasks_and_the_reverse_on_stop(infra, unique):
    settings = DemoSettings(
        kafka_bootstrap=infra.kafka_bootstrap,
        mongo_uri=infra.mongo_uri,
        mongo_db=f"kit_{unique}",
        consumer_group=f"demo-{unique}",
    )
    app = build_app(SPEC, settings)
    journal = None
    async with app.router.lifespan_context(app):
        journal = app.state.context
        for _ in range(100):
            if "task:start" in journal.steps:
                break
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
            ready = await c.get("/health/ready")
            assert (await c.get("/journal")).json()[:2] == ["first:start", "second:start"]
        assert ready.status_code == 200 and ready.json()["checks"] == {
            "bus": True,
            "dependencies": True,
            "consumers": True,
        }
    assert journal.steps == [
        "first:start",
        "second:start",
        "task:start",
        "task:stop",
        "second:stop",
        "first:stop",
    ]
    assert app.state.context is None
