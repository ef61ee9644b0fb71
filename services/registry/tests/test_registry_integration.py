"""The registry against the real servers: Kafka-protocol broker, MongoDB-wire store, S3.

The app runs in-process (``build_app`` + its lifespan); events go in through a raw producer and
come out through a raw consumer filtered on this test's model name.
"""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from modelbus_contracts import (
    Event,
    ModelPromoted,
    ModelRegistered,
    ModelRolledBack,
    encode,
)
from modelbus_embedded.testing import EventTap
from modelbus_platform.stores import build_object_store
from modelbus_registry.bootstrap import build_app
from modelbus_registry.config import RegistrySettings

pytestmark = pytest.mark.integration

OUT_TOPICS = [ModelRegistered.topic, ModelPromoted.topic, ModelRolledBack.topic]


async def wait_for_audit(http: httpx.AsyncClient, model: str, action: str, count: int = 1):
    async with asyncio.timeout(30):
        while True:
            rows = (await http.get(f"/models/{model}/audit", params={"limit": 200})).json()
            if not isinstance(rows, dict):
                matching = [r for r in rows if r["action"] == action]
                if len(matching) >= count:
                    return matching
            await asyncio.sleep(0.1)


@pytest.fixture
def settings(service_env, monkeypatch) -> RegistrySettings:
    for key, value in service_env.items():
        monkeypatch.setenv(key, value)
    return RegistrySettings(handler_backoff_s=0.01, handler_retries=1)


async def test_registry_end_to_end_on_real_servers(infra, settings, unique, mk):
    model = f"reg-{unique}"
    store = build_object_store(settings)
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap)
    collector = EventTap(infra.kafka_bootstrap, model, OUT_TOPICS)

    async def publish(event: Event) -> None:
        record = encode(event)
        headers = [(k, v.encode()) for k, v in record.headers.items()]
        await producer.send_and_wait(record.topic, record.value, key=record.key, headers=headers)

    app = build_app(settings)
    await producer.start()
    async with app.router.lifespan_context(app):
        await collector.start()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://registry") as http:
            try:
                await _scenario(http, store, publish, collector, model, mk)
            finally:
                await collector.stop()
                await producer.stop()


async def _scenario(http, store, publish, collector, model, mk) -> None:
    assert (await http.get("/health/ready")).status_code == 200

    # 1. a trained model is verified, registered and announced
    ref1 = await mk.put_artifact(store, model, seed=0)
    trained1 = mk.trained(model, ref1, run_id=f"run-1-{model}")
    await publish(trained1)
    registered1 = await collector.wait_for(lambda e: isinstance(e, ModelRegistered))
    assert (registered1.version, registered1.champion) == (1, None)
    assert registered1.correlation_id == trained1.correlation_id

    # 2. the same run again (new event id): still one version
    await publish(trained1.model_copy(update={"event_id": uuid.uuid4()}))
    await wait_for_audit(http, model, "registration_duplicate")
    assert len((await http.get(f"/models/{model}/versions")).json()) == 1

    # 3. promote v1, then register and promote v2 against it
    await publish(mk.evaluated(model, 1, None, cause=registered1))
    promoted1 = await collector.wait_for(lambda e: isinstance(e, ModelPromoted))
    assert (promoted1.version, promoted1.previous_version) == (1, None)
    assert promoted1.correlation_id == trained1.correlation_id
    ref2 = await mk.put_artifact(store, model, seed=1)
    await publish(mk.trained(model, ref2, run_id=f"run-2-{model}"))
    registered2 = await collector.wait_for(
        lambda e: isinstance(e, ModelRegistered) and e.version == 2
    )
    assert registered2.champion is not None and registered2.champion.version == 1
    await publish(mk.evaluated(model, 2, 1, cause=registered2))
    promoted2 = await collector.wait_for(lambda e: isinstance(e, ModelPromoted) and e.version == 2)
    assert promoted2.previous_version == 1
    aliases = (await http.get(f"/models/{model}/aliases")).json()
    assert (aliases["champion"], aliases["previous"]) == (2, 1)
    champion = (await http.get(f"/models/{model}/aliases/champion")).json()
    assert champion["status"] == "champion"
    assert champion["evaluation"]["decision"] == "promote"

    # 4. a stale compare-and-set is refused with the current value
    stale = {"version": 2, "expected_version": 1, "reason": "stale"}
    conflict = await http.put(f"/models/{model}/aliases/champion", json=stale)
    assert conflict.status_code == 409
    assert conflict.json()["reason"] == "promotion_conflict"
    assert "champion is at version 2" in conflict.json()["error"]

    # 5. an artifact whose bytes do not match its sha256 is rejected: no version, no event
    ref3 = mk.artifact_ref(model, mk.artifact_bytes(seed=2))
    await store.put(ref3.uri, mk.artifact_bytes(seed=3))
    await publish(mk.trained(model, ref3, run_id=f"run-3-{model}"))
    rejected = await wait_for_audit(http, model, "registration_rejected")
    assert "does not match" in rejected[0]["reason"]
    assert len((await http.get(f"/models/{model}/versions")).json()) == 2

    # 6. rollback: champion back to v1, announced on the bus
    rolled = await http.post(f"/models/{model}/rollback", json={"reason": "latency regression"})
    assert rolled.status_code == 200
    assert (rolled.json()["champion"], rolled.json()["previous"]) == (1, None)
    event = await collector.wait_for(lambda e: isinstance(e, ModelRolledBack))
    assert (event.from_version, event.to_version, event.reason) == (2, 1, "latency regression")
    artifact = await http.get(f"/models/{model}/versions/1/artifact")
    assert artifact.content == mk.artifact_bytes(seed=0)
    assert not [e for e in collector.events if isinstance(e, ModelRegistered) and e.version > 2]
    actions = [r["action"] for r in (await http.get("/audit", params={"model_name": model})).json()]
    assert actions[0] == "rolled_back"
    assert {"registered", "evaluated", "promoted", "promotion_conflict"} <= set(actions)
    metrics = (await http.get("/metrics")).text
    assert 'modelbus_registry_decisions_total{action="promoted"} 2.0' in metrics
