"""The scorer against the real broker and S3 server, with a fake registry over HTTP.

One scenario, in order: start-up sync from the registry, v2 infer logged as PredictionMade,
stream scoring (good and bad records), hot swap on ModelPromoted, and a corrupted artifact that
is refused with ModelLoadFailed while the scorer keeps serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from modelbus_contracts import (
    Event,
    ModelLoadFailed,
    ModelPromoted,
    ModelRolledBack,
    PredictionMade,
    ScoringFailed,
    ScoringRequested,
    encode,
)
from modelbus_embedded.testing import EventTap
from modelbus_platform.stores import build_object_store
from modelbus_scorer.bootstrap import build_app
from modelbus_scorer.config import ScorerSettings

pytestmark = pytest.mark.integration

OBSERVED = (PredictionMade, ScoringFailed, ModelLoadFailed)


class FakeRegistryHttp:
    """Answers ``GET /models`` and ``GET /models/{name}/aliases/champion`` like the registry."""

    def __init__(self) -> None:
        self.champions: dict[str, dict] = {}

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/models":
            return httpx.Response(200, json=[{"name": n} for n in self.champions])
        parts = path.strip("/").split("/")
        if len(parts) == 4 and parts[0] == "models" and parts[2:] == ["aliases", "champion"]:
            view = self.champions.get(parts[1])
            if view is None:
                return httpx.Response(
                    404, json={"error": "alias champion is not set", "reason": "not_found"}
                )
            return httpx.Response(200, json=view)
        return httpx.Response(404, json={"error": "not found", "reason": "not_found"})


async def produce(producer: AIOKafkaProducer, event: Event) -> None:
    record = encode(event)
    headers = [(k, v.encode()) for k, v in record.headers.items()]
    await producer.send_and_wait(record.topic, record.value, key=record.key, headers=headers)


async def eventually(check: Callable[[], object], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if await check():
                return
            await asyncio.sleep(0.1)


async def test_scorer_end_to_end_on_real_servers(
    infra, service_env, unique, monkeypatch, make_model, make_view
):
    for key, value in service_env.items():
        monkeypatch.setenv(key, value)
    settings = ScorerSettings(
        instance_id=f"it-{unique}", registry_url="http://registry.test", sync_interval_s=60
    )
    model = f"scorer-it-{unique}"
    store = build_object_store(settings)
    registry = FakeRegistryHttp()

    async def register(version: int, artifact: bytes, sha: str | None = None) -> dict:
        view = make_view(model, version, artifact, sha=sha)
        await store.put(view.artifact.uri, artifact)
        registry.champions[model] = view.model_dump(mode="json")
        return view

    v1_bytes = make_model(coef=[1.0, 1.0]).to_bytes()
    await register(1, v1_bytes)
    app = build_app(settings, registry_transport=httpx.MockTransport(registry.handle))
    observer = EventTap(infra.kafka_bootstrap, model, [c.topic for c in OBSERVED])
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap)
    await observer.start()
    await producer.start()
    try:
        async with app.router.lifespan_context(app):
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://s")

            async def model_ready():
                return (await client.get(f"/v2/models/{model}/ready")).status_code == 200

            await eventually(model_ready)
            assert (await client.get("/health/ready")).status_code == 200

            # v2 infer, logged as PredictionMade on the broker
            infer = {
                "id": "http-1",
                "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}],
            }
            response = await client.post(f"/v2/models/{model}/infer", json=infer)
            assert response.status_code == 200, response.text
            [pid] = response.json()["parameters"]["prediction_ids"]
            made = await observer.wait_for(
                lambda e: isinstance(e, PredictionMade) and e.prediction_id == pid
            )
            assert (made.source, made.version) == ("http", 1)
            assert made.features == {"age": 1.0, "income": 2.0}

            # stream scoring: correlation flows from the request
            request = ScoringRequested(
                model_name=model, request_id=f"r-{unique}", features={"age": 0.5, "income": 1}
            )
            await produce(producer, request)
            streamed = await observer.wait_for(
                lambda e: isinstance(e, PredictionMade) and e.request_id == request.request_id
            )
            assert streamed.correlation_id == request.correlation_id
            assert streamed.causation_id == request.event_id
            assert streamed.source == "stream"

            bad = ScoringRequested(
                model_name=model, request_id=f"bad-{unique}", features={"age": 1, "zip": 2}
            )
            await produce(producer, bad)
            failed = await observer.wait_for(
                lambda e: isinstance(e, ScoringFailed) and e.request_id == bad.request_id
            )
            assert "feature_mismatch" in failed.error
            assert failed.correlation_id == bad.correlation_id

            # promotion: the registry says v2, the event only triggers the re-read
            v2 = await register(2, make_model(coef=[-1.0, 0.5]).to_bytes())
            promote = ModelPromoted(
                model_name=model,
                version=2,
                previous_version=1,
                artifact=v2.artifact,
                feature_names=v2.feature_names,
                reason="better",
            )
            await produce(producer, promote)

            async def serves(version: str):
                r = await client.post(f"/v2/models/{model}/infer", json=infer)
                return r.status_code == 200 and r.json()["model_version"] == version

            await eventually(lambda: serves("2"))
            meta = (await client.get(f"/v2/models/{model}")).json()
            assert meta["versions"] == ["2", "1"]

            # a corrupted artifact: refused, announced, and v2 keeps serving
            good = make_model(coef=[5.0, 5.0]).to_bytes()
            v3 = await register(
                3, b'{"format": "corrupted"}', sha=make_view(model, 3, good).artifact.sha256
            )
            promote_bad = ModelPromoted(
                model_name=model,
                version=3,
                previous_version=2,
                artifact=v3.artifact,
                feature_names=v3.feature_names,
                reason="bad artifact",
            )
            await produce(producer, promote_bad)
            load_failed = await observer.wait_for(lambda e: isinstance(e, ModelLoadFailed))
            assert load_failed.version == 3
            assert load_failed.instance == settings.instance_id
            assert load_failed.causation_id == promote_bad.event_id
            assert "sha256" in load_failed.error
            assert await serves("2")

            # rollback: the registry points back at v1, still warm as the previous version
            v1 = make_view(model, 1, v1_bytes)
            registry.champions[model] = v1.model_dump(mode="json")
            rollback = ModelRolledBack(
                model_name=model,
                from_version=2,
                to_version=1,
                artifact=v1.artifact,
                feature_names=v1.feature_names,
                reason="regression",
            )
            await produce(producer, rollback)
            await eventually(lambda: serves("1"))
            metrics = (await client.get("/metrics")).text
            assert 'modelbus_scorer_syncs_total{outcome="reused_previous"} 1.0' in metrics
            assert f'modelbus_scorer_model_load_failures_total{{model="{model}"}} 1.0' in metrics
            await client.aclose()
    finally:
        await producer.stop()
        await observer.stop()
