"""The deployer against the real servers: Kafka-protocol broker, MongoDB-wire and S3.

Two tiny models trained on synthetic data (one good, one that learned inverted labels) go to S3
with their hold-outs; ModelRegistered v1 (no champion) must come back as a promote, v2 (worse
than the champion v1) as a reject carrying the champion's metrics on v2's own hold-out.
"""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from modelbus_contracts import (
    ArtifactRef,
    DatasetRef,
    Lineage,
    ModelEvaluated,
    ModelRegistered,
    ModelSummary,
    ScoringFailed,
    decode,
)
from modelbus_deployer.bootstrap import build_app
from modelbus_deployer.config import DeployerSettings, ModelPolicy
from modelbus_embedded.testing import EventTap, publish
from modelbus_ml import train_logreg
from modelbus_platform.stores import S3ObjectStore, sha256_hex

pytestmark = pytest.mark.integration


async def put_artifact(store, model_name: str, model) -> ArtifactRef:
    data = model.to_bytes()
    digest = sha256_hex(data)
    key = f"artifacts/{model_name}/{digest}.json"
    await store.put(key, data, "application/json")
    return ArtifactRef(uri=key, sha256=digest, size_bytes=len(data))


async def put_dataset(store, model_name: str, ds) -> DatasetRef:
    data = ds.to_csv_bytes()
    digest = sha256_hex(data)
    key = f"datasets/{model_name}/{digest}.csv"
    await store.put(key, data, "text/csv")
    return DatasetRef(uri=key, sha256=digest, rows=ds.rows)


async def read_evaluated(
    bootstrap: str, model_name: str, until_version: int, timeout: float = 60.0
) -> list[ModelEvaluated]:
    consumer = AIOKafkaConsumer(
        ModelEvaluated.topic,
        bootstrap_servers=bootstrap,
        group_id=f"deployer-test-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    out: list[ModelEvaluated] = []
    try:
        async with asyncio.timeout(timeout):
            while not out or out[-1].version != until_version:
                message = await consumer.getone()
                if message.key == model_name.encode():
                    out.append(decode(message.headers, message.value, expected=ModelEvaluated))
    finally:
        await consumer.stop()
    return out


def registered(model_name, version, artifact, holdout, features, champion=None):
    return ModelRegistered(
        producer="registry",
        model_name=model_name,
        version=version,
        run_id=f"run-{version}",
        artifact=artifact,
        feature_names=list(features),
        metrics={},
        lineage=Lineage(
            dataset=holdout, holdout=holdout, seed=0, code_version="test", trigger="api"
        ),
        champion=champion,
    )


async def test_promote_first_then_reject_a_worse_challenger(
    infra, service_env, unique, monkeypatch, make_dataset
):
    for key, value in service_env.items():
        monkeypatch.setenv(key, value)
    settings = DeployerSettings()
    store = S3ObjectStore(
        service_env["MODELBUS_S3_ENDPOINT"],
        settings.s3_access_key.get_secret_value(),
        settings.s3_secret_key.get_secret_value(),
        service_env["MODELBUS_BUCKET"],
    )
    model_name = f"deployer-it-{unique}"
    good = train_logreg(make_dataset(500, seed=11), {"epochs": 100}, seed=0)
    bad = train_logreg(make_dataset(500, seed=12, flip=True), {"epochs": 100}, seed=0)
    good_ref = await put_artifact(store, model_name, good)
    bad_ref = await put_artifact(store, model_name, bad)
    holdout_v1 = await put_dataset(store, model_name, make_dataset(200, seed=13))
    holdout_v2 = await put_dataset(store, model_name, make_dataset(250, seed=14))
    features = good.feature_names
    v1 = registered(model_name, 1, good_ref, holdout_v1, features)
    champion = ModelSummary(version=1, artifact=good_ref, feature_names=list(features))
    v2 = registered(model_name, 2, bad_ref, holdout_v2, features, champion)

    app = build_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://deployer") as client:
            ready = await client.get("/health/ready")
            await publish(infra.kafka_bootstrap, v1, v1, v2)  # v1 twice: a redelivery
            evaluated = await read_evaluated(infra.kafka_bootstrap, model_name, until_version=2)
            listed = await client.get("/decisions", params={"model_name": model_name})
            second = await client.get(f"/decisions/{model_name}/2")
            absent = await client.get(f"/decisions/{model_name}/3")

    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {
        "bus": True,
        "dependencies": True,
        "consumers": True,
        "mongo": True,
        "object_store": True,
    }

    assert [(e.version, e.decision) for e in evaluated] == [(1, "promote"), (2, "reject")]
    first, rejected = evaluated
    assert first.causation_id == v1.event_id
    assert first.correlation_id == v1.correlation_id
    assert first.producer == "deployer"
    assert first.champion_version is None
    assert {g.name for g in first.gates} == {
        "holdout_size",
        "task",
        "output_sanity",
        "latency_budget",
        "champion_delta",
        "paired_test",
    }
    assert "of the hold-out's base rate" in first.reasons[4]
    assert first.challenger_metrics["auc"] > 0.9
    assert rejected.causation_id == v2.event_id
    assert rejected.champion_version == 1
    assert rejected.holdout == holdout_v2
    assert rejected.champion_metrics["rows"] == rejected.challenger_metrics["rows"] == 250
    assert rejected.champion_metrics["auc"] > 0.9 > rejected.challenger_metrics["auc"]
    assert "on the same 250-row hold-out" in rejected.reasons[0]

    assert listed.status_code == 200
    assert [(d["version"], d["decision"]) for d in listed.json()] == [
        (2, "reject"),
        (1, "promote"),
    ]
    assert all(d["published"] for d in listed.json())
    assert second.json()["event_id"] == str(rejected.event_id)
    assert second.json()["champion_metrics"]["auc"] == rejected.champion_metrics["auc"]
    assert absent.status_code == 404


async def counted(live, shadow_errors: int, timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if sum(w.shadow_errors for w in live.tracker.windows.values()) >= shadow_errors:
                return
            await asyncio.sleep(0.1)


def shadow_failures(model_name: str, n: int) -> list[ScoringFailed]:
    return [
        ScoringFailed(
            producer="scorer",
            model_name=model_name,
            request_id=f"r-{uuid.uuid4().hex}",
            error="ValueError: shadow raised",
            version=2,
            served_by="shadow",
        )
        for _ in range(n)
    ]


@pytest.mark.timeout(180)
async def test_a_broken_shadow_is_rejected_across_a_deployer_restart(
    infra, service_env, unique, monkeypatch, make_dataset
):
    """ScoringFailed(served_by=shadow) on the real broker; 60 before a restart, 40 after: the
    restarted deployer continues from the MongoDB checkpoint and rejects on 100 of 100."""
    for key, value in service_env.items():
        monkeypatch.setenv(key, value)
    model_name = f"deployer-shadow-{unique}"
    settings = DeployerSettings(policies={model_name: ModelPolicy(rollout="shadow")})
    store = S3ObjectStore(
        service_env["MODELBUS_S3_ENDPOINT"],
        settings.s3_access_key.get_secret_value(),
        settings.s3_secret_key.get_secret_value(),
        service_env["MODELBUS_BUCKET"],
    )
    good = train_logreg(make_dataset(500, seed=11), {"epochs": 100}, seed=0)
    bad = train_logreg(make_dataset(500, seed=12, flip=True), {"epochs": 100}, seed=0)
    holdout = await put_dataset(store, model_name, make_dataset(200, seed=13))
    bad_ref = await put_artifact(store, model_name, bad)
    champion = ModelSummary(version=1, artifact=bad_ref, feature_names=list(bad.feature_names))
    v2 = registered(
        model_name, 2, await put_artifact(store, model_name, good), holdout,
        good.feature_names, champion,
    )  # fmt: skip

    tap = EventTap(infra.kafka_bootstrap, model_name, [ModelEvaluated.topic])
    await tap.start()
    try:
        app = build_app(settings)
        async with app.router.lifespan_context(app):
            await publish(infra.kafka_bootstrap, v2)
            shadow = await tap.wait_for(lambda e: e.decision == "shadow", timeout=60)
            await publish(infra.kafka_bootstrap, *shadow_failures(model_name, 60))
            await counted(app.state.context.live, 60)

        restarted = build_app(settings)
        async with restarted.router.lifespan_context(restarted):
            await publish(infra.kafka_bootstrap, *shadow_failures(model_name, 40))
            rejected = await tap.wait_for(lambda e: e.decision == "reject", timeout=60)
    finally:
        await tap.stop()

    assert rejected.correlation_id == shadow.correlation_id == v2.correlation_id
    assert rejected.live_metrics["shadow_errors"] == 100
    [gate] = [g for g in rejected.gates if g.name == "shadow_error_rate"]
    assert (gate.passed, gate.observed, gate.threshold) == (False, 1.0, 0.01)
    assert "shadow v2 raised on 100 of 100 requests" in rejected.reasons[0]
