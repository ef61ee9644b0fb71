"""The trainer app against the real servers: HTTP upload + request -> ModelTrained on the broker
with an artifact that matches S3; a River model reproduced byte-identically from S3 through
``POST /runs/{id}/reproduce``; feedback events + DriftDetected -> a drift retrain."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from trainer_fixtures import drift_event, feedback_events, make_dataset

from modelbus_contracts import ModelTrained, decode
from modelbus_contracts.envelope import utcnow
from modelbus_embedded.testing import publish
from modelbus_ml import load_model
from modelbus_platform.stores import build_object_store, sha256_hex
from modelbus_platform.testing import FakeRegistry
from modelbus_trainer.bootstrap import build_app
from modelbus_trainer.config import TrainerSettings

pytestmark = pytest.mark.integration
REGISTRY = FakeRegistry()


@pytest.fixture(scope="module")
async def trainer(infra):
    suffix = uuid.uuid4().hex[:10]
    env = infra.env(db=f"trainer_{suffix}", bucket=f"trainer-{suffix}")
    settings = TrainerSettings(
        **{k.removeprefix("MODELBUS_").lower(): v for k, v in env.items()},
        drift_min_rows=30,
        drift_cooldown_s=0,
        drift_wait_timeout_s=60,
        code_version="it",
    )
    # the registry's part here is the models' policies (an admin allows river's pickles)
    app = build_app(settings, registry=REGISTRY)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://trainer") as client:
            yield client, app, settings


async def _next_trained(
    consumer: AIOKafkaConsumer, model: str, timeout: float = 60
) -> ModelTrained:
    async with asyncio.timeout(timeout):
        while True:
            message = await consumer.getone()
            if message.key == model.encode():
                return decode(message.headers, message.value, expected=ModelTrained)


async def _consumer(bootstrap: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        ModelTrained.topic,
        bootstrap_servers=bootstrap,
        group_id=f"it-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    return consumer


async def test_ready_when_bus_mongo_and_store_answer(trainer):
    client, _, _ = trainer
    response = await client.get("/health/ready")
    assert response.status_code == 200
    assert response.json()["checks"] == {
        "bus": True,
        "dependencies": True,
        "consumers": True,
        "mongo": True,
        "object_store": True,
    }


async def test_uploaded_dataset_and_request_produce_a_verified_model(trainer, infra, unique):
    client, _, settings = trainer
    model = f"it-{unique}"
    csv = make_dataset(300).to_csv_bytes()
    put = await client.put(f"/datasets/{model}", content=csv, headers={"content-type": "text/csv"})
    assert put.status_code == 200, put.text
    consumer = await _consumer(infra.kafka_bootstrap)
    try:
        body = {"dataset_uri": put.json()["uri"], "seed": 5}
        accepted = await client.post(f"/models/{model}/train", json=body)
        assert accepted.status_code == 202
        trained = await _next_trained(consumer, model)
    finally:
        await consumer.stop()

    assert str(trained.correlation_id) == accepted.json()["correlation_id"]
    assert str(trained.causation_id) == accepted.json()["event_id"]
    store = build_object_store(settings)
    artifact = await store.get(trained.artifact.uri)
    assert sha256_hex(artifact) == trained.artifact.sha256
    dataset = await store.get(trained.lineage.dataset.uri)
    assert dataset == csv and trained.lineage.dataset.sha256 == put.json()["sha256"]
    assert trained.lineage.trigger == "api" and trained.lineage.seed == 5
    assert trained.lineage.code_version == "it"

    run = (await client.get(f"/runs/{accepted.json()['run_id']}")).json()
    assert run["state"] == "succeeded"
    assert run["artifact"]["sha256"] == trained.artifact.sha256


async def test_identical_requests_make_one_run_and_one_model(trainer, infra, unique):
    """Commands deduplicated over the real bus and MongoDB: the API claims the run, the
    consumer of its event finds the claim its own, the duplicates are answered with that run."""
    client, _, _ = trainer
    model = f"dup-{unique}"
    csv = make_dataset(200, seed=7).to_csv_bytes()
    put = await client.put(f"/datasets/{model}", content=csv, headers={"content-type": "text/csv"})
    body = {"dataset_uri": put.json()["uri"], "seed": 1, "params": {"family": "logreg"}}
    consumer = await _consumer(infra.kafka_bootstrap)
    try:
        answers = await asyncio.gather(
            *(client.post(f"/models/{model}/train", json=body) for _ in range(3))
        )
        trained = await _next_trained(consumer, model)
    finally:
        await consumer.stop()
    assert sorted(a.status_code for a in answers) == [200, 200, 202]
    assert {a.json()["run_id"] for a in answers} == {trained.run_id}
    assert sorted(a.json()["duplicate"] for a in answers) == [False, True, True]
    runs = (await client.get("/runs", params={"model_name": model})).json()
    assert [(r["run_id"], r["state"]) for r in runs] == [(trained.run_id, "succeeded")]
    again = await client.post(f"/models/{model}/train", json=body)  # after the run: the same
    assert again.status_code == 200 and again.json()["run_id"] == trained.run_id


async def test_feedback_then_drift_retrains_on_the_feedback(trainer, infra, unique):
    client, _, _ = trainer
    model = f"drift-{unique}"
    detected_at = utcnow() - timedelta(minutes=1)
    old = feedback_events(model, 20, detected_at - timedelta(hours=1), seed=3)
    new = feedback_events(model, 40, utcnow(), seed=4)
    # labels first: the join must not care about order
    await publish(infra.kafka_bootstrap, *(e for pair in old + new for e in reversed(pair)))

    async with asyncio.timeout(60):
        while True:
            count = (await client.get(f"/models/{model}/feedback/count")).json()
            if count["complete"] == 60:
                break
            await asyncio.sleep(0.3)

    consumer = await _consumer(infra.kafka_bootstrap)
    try:
        drift = drift_event(model, detected_at, version=2)
        await publish(infra.kafka_bootstrap, drift)
        trained = await _next_trained(consumer, model)
    finally:
        await consumer.stop()

    assert trained.correlation_id == drift.correlation_id
    assert trained.causation_id == drift.event_id
    assert trained.lineage.trigger == "drift" and trained.lineage.parent_version == 2
    assert trained.lineage.dataset.rows == 40  # only feedback predicted after the drift
    runs = (await client.get("/runs", params={"model_name": model})).json()
    assert [(r["trigger"], r["state"]) for r in runs] == [("drift", "succeeded")]


async def test_a_river_model_is_stored_verified_and_reproduced_from_s3(trainer, infra, unique):
    client, _, settings = trainer
    model = f"river-{unique}"
    REGISTRY.set_policy(model, {"artifacts": {"allow_pickle": True}})
    csv = make_dataset(300).to_csv_bytes()
    put = await client.put(f"/datasets/{model}", content=csv, headers={"content-type": "text/csv"})
    consumer = await _consumer(infra.kafka_bootstrap)
    try:
        body = {"dataset_uri": put.json()["uri"], "params": {"family": "river"}, "seed": 2}
        accepted = await client.post(f"/models/{model}/train", json=body)
        trained = await _next_trained(consumer, model)
    finally:
        await consumer.stop()
    assert trained.artifact.format == "modelbus.river.v1"
    assert trained.artifact.uri.endswith(".pkl")
    data = await build_object_store(settings).get(trained.artifact.uri)
    served = load_model(data, trained.artifact.format, trained.artifact.sha256)
    assert served.feature_names == tuple(trained.feature_names)

    reproduced = await client.post(f"/runs/{accepted.json()['run_id']}/reproduce")
    assert reproduced.status_code == 200, reproduced.text
    assert reproduced.json()["matched"] is True
    assert reproduced.json()["actual_sha256"] == trained.artifact.sha256


async def test_datasets_are_write_once_in_s3(trainer, unique):
    """The same upload twice is one object; bytes replaced under its sha256 key are never
    overwritten (409 dataset_conflict) nor hidden."""
    client, _, settings = trainer
    model = f"once-{unique}"
    csv = make_dataset(60).to_csv_bytes()
    headers = {"content-type": "text/csv"}
    first = await client.put(f"/datasets/{model}", content=csv, headers=headers)
    again = await client.put(f"/datasets/{model}", content=csv, headers=headers)
    assert first.status_code == again.status_code == 200
    uri = first.json()["uri"]
    assert again.json()["uri"] == uri == f"datasets/{model}/{sha256_hex(csv)}.csv"

    store = build_object_store(settings)
    await store.put(uri, b"x,label\n1,0\n")  # raw write access to the bucket
    refused = await client.put(f"/datasets/{model}", content=csv, headers=headers)
    assert refused.status_code == 409 and refused.json()["reason"] == "dataset_conflict"
    assert await store.get(uri) == b"x,label\n1,0\n"
    assert await store.list(f"datasets/{model}/") == [uri]
