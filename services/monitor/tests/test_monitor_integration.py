"""The monitor against the real broker and MongoDB-wire server; the registry is an httpx mock."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from modelbus_contracts import (
    ArtifactRef,
    Columns,
    DatasetRef,
    DriftDetected,
    Event,
    FeatureStats,
    LabelObserved,
    Lineage,
    ModelPromoted,
    PredictionMade,
    decode,
)
from modelbus_monitor.adapters import MongoIncidentStore
from modelbus_monitor.bootstrap import build_app
from modelbus_monitor.config import MonitorSettings
from modelbus_monitor.metrics import MonitorMetrics
from modelbus_monitor.service import MonitorService, detector_config
from modelbus_platform.bus import EventBus, MemoryProcessedEvents
from modelbus_platform.metrics import Metrics
from modelbus_platform.registry import RegistryClient
from modelbus_platform.stores import connect_mongo
from modelbus_platform.testing import InlineRelay, RecordingPublisher

pytestmark = pytest.mark.integration

SHA = "1" * 64
ARTIFACT = ArtifactRef(uri="artifacts/m/a.json", sha256=SHA, size_bytes=10)
REFERENCE = {"x": FeatureStats(count=500, mean=0.0, std=1.0, min=-4.0, max=4.0)}


def registry_transport(model: str, state: dict | None = None) -> httpx.MockTransport:
    """The registry's read API for one model whose champion is ``state["champion"]`` (v1)."""
    state = state if state is not None else {"champion": 1}
    dataset = DatasetRef(uri="datasets/m/d.csv", sha256=SHA, rows=500).model_dump(mode="json")
    lineage = Lineage.model_validate(
        {"dataset": dataset, "holdout": dataset, "seed": 1, "code_version": "t", "trigger": "api"}
    )
    version = {
        "model_name": model,
        "version": 1,
        "run_id": "run-1",
        "artifact": ARTIFACT.model_dump(mode="json"),
        "feature_names": ["x"],
        "lineage": lineage.model_dump(mode="json"),
        "reference": {k: v.model_dump(mode="json") for k, v in REFERENCE.items()},
        "status": "champion",
        "created_at": datetime(2026, 1, 1, tzinfo=UTC).isoformat(),
    }

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        view = {"name": model, "aliases": {"model_name": model, "champion": state["champion"]}}
        routes = {
            "/health/live": {"status": "live"},
            "/models": [view],
            f"/models/{model}": view,
            f"/models/{model}/versions/1": version,
        }
        if path in routes:
            return httpx.Response(200, json=routes[path])
        return httpx.Response(404, json={"error": "not found", "reason": "not_found"})

    return httpx.MockTransport(handle)


def settings_for(service_env: dict[str, str]) -> MonitorSettings:
    env = {k.removeprefix("MODELBUS_").lower(): v for k, v in service_env.items()}
    return MonitorSettings(**env, handler_backoff_s=0.01, log_json=False)


def traffic(
    model: str, n: int, error_rate: float, rng: random.Random, version: int = 1
) -> list[Event]:
    events: list[Event] = []
    for _ in range(n):
        pid = uuid.uuid4().hex
        predicted = int(rng.random() < 0.5)
        truth = 1 - predicted if rng.random() < error_rate else predicted
        features = {"x": rng.gauss(0.0, 1.0)}
        events.append(
            PredictionMade(
                model_name=model,
                prediction_id=pid,
                version=version,
                features=features,
                score=0.5,
                label=predicted,
                latency_ms=1.0,
            )
        )
        events.append(LabelObserved(model_name=model, prediction_id=pid, label=truth))
    return events


async def read_drift(bootstrap: str, model: str, timeout: float = 60.0) -> DriftDetected:
    consumer = AIOKafkaConsumer(
        DriftDetected.topic,
        bootstrap_servers=bootstrap,
        group_id=f"drift-reader-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = await consumer.getone()
                if message.key == model.encode():
                    event = decode(message.headers, message.value, expected=DriftDetected)
                    assert isinstance(event, DriftDetected)
                    return event
    finally:
        await consumer.stop()


async def wait_for(check, timeout: float = 60.0, every: float = 0.2):
    async with asyncio.timeout(timeout):
        while True:
            result = await check()
            if result:
                return result
            await asyncio.sleep(every)


async def test_concept_change_opens_one_incident_end_to_end(infra, service_env, unique):
    model = f"mon-{unique}"
    settings = settings_for(service_env)
    app = build_app(settings, registry_transport=registry_transport(model))
    producer = EventBus(
        infra.kafka_bootstrap,
        service="upstream",
        metrics=Metrics("upstream"),
        processed=MemoryProcessedEvents(),
    )
    await producer.start()
    rng = random.Random(7)
    promotion = ModelPromoted(
        model_name=model,
        version=1,
        previous_version=None,
        artifact=ARTIFACT,
        feature_names=["x"],
        reason="first",
    )
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client,
        ):
            ready = await client.get("/health/ready")
            assert ready.status_code == 200, ready.text

            async def status() -> dict:
                response = await client.get(f"/models/{model}/status")
                return response.json() if response.status_code == 200 else {}

            await producer.publish(promotion)
            await wait_for(lambda: _has(status, lambda s: s["counts"].get("promotions") == 1))

            before = traffic(model, 400, 0.05, rng)
            after = traffic(model, 600, 0.6, rng)
            for event in before + after:
                await producer.publish(event)
            drift = await read_drift(infra.kafka_bootstrap, model)
            assert drift.feature == "__error__"
            assert drift.version == 1 and drift.producer == "monitor"
            assert str(drift.correlation_id) == drift.incident_id
            assert drift.correlation_id not in {e.correlation_id for e in before + after}
            assert drift.causation_id in {e.event_id for e in after}
            assert drift.statistic > drift.reference_value

            done = await wait_for(lambda: _has(status, lambda s: s["joined"] == 1000))
            assert done["open_incident"]["incident_id"] == drift.incident_id

            # duplicates (same event ids), including the old promotion, change nothing
            for event in [promotion, *before[:50], *after[:50]]:
                await producer.publish(event)
            sentinel = traffic(model, 1, 0.0, rng)
            for event in sentinel:
                await producer.publish(event)
            final = await wait_for(lambda: _has(status, lambda s: s["joined"] == 1001))
            assert final["open_incident"]["incident_id"] == drift.incident_id
            assert final["counts"]["promotions"] == 1
            assert final["serving_version"] == 1

            listed = (await client.get("/incidents", params={"model_name": model})).json()
            assert [i["incident_id"] for i in listed] == [drift.incident_id]
            incident = (await client.get(f"/incidents/{drift.incident_id}")).json()
            assert incident["status"] == "open" and incident["published"] is True
            assert incident["evidence"]["feature"] == "__error__"
            assert incident["causation_id"] == str(drift.causation_id)
            metrics = (await client.get("/metrics")).text
            assert "modelbus_monitor_joined_pairs_total" in metrics
            assert 'outcome="duplicate"' in metrics

        await restart_knows_the_incident_and_recovery_closes_it(settings, model, drift.incident_id)
    finally:
        await producer.stop()


async def _has(status, predicate) -> dict | None:
    current = await status()
    return current if current and predicate(current) else None


async def restart_knows_the_incident_and_recovery_closes_it(
    settings: MonitorSettings, model: str, incident_id: str
) -> None:
    """A restarted service layer on the same Mongo knows the incident; v2 serving puts it in
    ``recovering``, and v2's live accuracy back at the pre-drift level closes it.

    (Service layer with the real adapters: a re-joining consumer group takes ~20 s to rebalance
    on this broker, and the bus path for promotions is already exercised above.)"""
    client, db = connect_mongo(settings)
    store = MongoIncidentStore(db)
    champion = {"champion": 1}
    registry = RegistryClient(settings.registry_url, transport=registry_transport(model, champion))
    publisher = RecordingPublisher()
    service = MonitorService(
        detector_config(settings),
        publisher=publisher,
        events=InlineRelay([store.outbox], publisher),
        incidents=store,
        registry=registry,
        metrics=MonitorMetrics(),
    )
    await service.rebuild()
    status = service.status(model)
    assert status is not None
    assert (status["open_incident"]["incident_id"], status["serving_version"]) == (incident_id, 1)
    assert publisher.events == []  # already published before the restart: not sent again
    v2 = ModelPromoted(
        model_name=model,
        version=2,
        previous_version=1,
        artifact=ARTIFACT,
        feature_names=["x"],
        reason="retrained after drift",
        correlation_id=uuid.UUID(incident_id),
    )
    await service.on_promoted(v2)  # the registry does not say v2 serves: a claim, not acted on
    assert (await store.get(incident_id)).state == "retraining"
    champion["champion"] = 2
    await service.on_promoted(v2)
    incident = await store.get(incident_id)  # as the MongoDB-wire server gives it back
    assert incident is not None
    assert (incident.status, incident.state, incident.live_version) == ("open", "recovering", 2)
    assert [t["state"] for t in incident.transitions] == ["detected", "retraining", "recovering"]
    assert incident.baseline_accuracy is not None and incident.baseline_accuracy > 0.9
    events = traffic(model, 300, 0.05, random.Random(3), version=2)
    await service.on_prediction_batch(Columns[PredictionMade].of(events[0::2]))
    await service.on_label_batch(Columns[LabelObserved].of(events[1::2]))
    incident = await store.get(incident_id)
    assert incident is not None
    assert (incident.status, incident.state, incident.closed_by_version) == (
        "closed",
        "recovered",
        2,
    )
    assert incident.live_points == 300 and incident.live_accuracy is not None
    assert incident.live_accuracy >= incident.baseline_accuracy - 0.03
    assert all(i.model_name != model for i in await store.open_incidents())
    await registry.close()
    await client.close()
