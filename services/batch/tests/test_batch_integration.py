"""Batch scoring on the real broker, S3 server and MongoDB-wire server (fake registry over
HTTP): a 100k-row Parquet file via the API, a CSV with bad rows via BatchScoringRequested
(delivered twice, run once), and a cron fire; outputs checked in S3, completions on Kafka."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from datetime import UTC, datetime

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.csv as pv
import pyarrow.parquet as pq
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from modelbus_batch.bootstrap import build_app
from modelbus_batch.config import BatchSettings
from modelbus_batch.domain import SCHEDULE_NAMESPACE, BatchSchedule, fire_job_id
from modelbus_batch.handlers import schedule_fired
from modelbus_contracts import BatchScoringCompleted, BatchScoringRequested, decode, encode
from modelbus_embedded.testing import version_view
from modelbus_platform.scheduler import Fire, fire_id
from modelbus_platform.stores import build_object_store, sha256_hex

pytestmark = pytest.mark.integration

ROWS = 100_000


class Registry:
    """``GET /models``, ``/models/{name}/aliases/champion``, ``/models/{name}/versions/{v}``."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.versions: dict[int, dict] = {}
        self.champion: int | None = None

    def handle(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.strip("/").split("/")
        if parts == ["models"]:
            return httpx.Response(200, json=[{"name": self.model}])
        if parts == ["models", self.model, "aliases", "champion"] and self.champion:
            return httpx.Response(200, json=self.versions[self.champion])
        if parts[:3] == ["models", self.model, "versions"] and int(parts[3]) in self.versions:
            return httpx.Response(200, json=self.versions[int(parts[3])])
        return httpx.Response(404, json={"error": "not found", "reason": "not_found"})


class Completions:
    """A raw consumer of BatchScoringCompleted, keeping only our model's (key == model)."""

    def __init__(self, bootstrap: str, model: str) -> None:
        self.key = model.encode()
        self.events: list[BatchScoringCompleted] = []
        self.consumer = AIOKafkaConsumer(
            BatchScoringCompleted.topic,
            bootstrap_servers=bootstrap,
            group_id=f"batch-observer-{uuid.uuid4().hex}",
            auto_offset_reset="earliest",
        )

    async def start(self) -> None:
        await self.consumer.start()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for message in self.consumer:
            if message.key == self.key:
                self.events.append(decode(message.headers, message.value))

    async def wait_for(self, job_id: str, timeout: float = 30.0) -> BatchScoringCompleted:
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events:
                    if event.job_id == job_id:
                        return event
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self.task.cancel()
        await self.consumer.stop()


async def ready(client: httpx.AsyncClient, timeout: float = 30.0) -> None:
    """Wait for readiness: broker, store, registry, MongoDB, and the job store initialised."""
    async with asyncio.timeout(timeout):
        while True:
            if (await client.get("/health/ready")).status_code == 200:
                return
            await asyncio.sleep(0.1)


def parquet_input(n: int) -> tuple[bytes, np.ndarray]:
    rng = np.random.default_rng(7)
    age, income = rng.normal(size=n), rng.normal(size=n)
    sink = io.BytesIO()
    pq.write_table(pa.table({"id": np.arange(n), "age": age, "income": income}), sink)
    return sink.getvalue(), np.column_stack([age, income])


CSV = b"id,age,income\n1,0.5,1\n2,oops,1\n3,,2\n4,1,2\n5,nan,1\n6,2\n7,-1,-1\n"


async def test_batch_jobs_on_real_servers(infra, service_env, unique, monkeypatch, make_model):
    for key, value in service_env.items():
        monkeypatch.setenv(key, value)
    settings = BatchSettings(instance_id=f"batch-it-{unique}", registry_url="http://registry.test")
    model = f"batch-it-{unique}"
    store = build_object_store(settings)
    registry = Registry(model)
    models = {1: make_model(coef=[1.0, 0.0]), 2: make_model(coef=[0.5, -2.0])}
    for version, m in models.items():
        view = version_view(model, version, m.to_bytes())
        await store.put(view.artifact.uri, m.to_bytes())
        registry.versions[version] = view.model_dump(mode="json")
    registry.champion = 2
    data, X = parquet_input(ROWS)
    await store.put(f"in/{unique}/big.parquet", data)
    await store.put(f"in/{unique}/small.csv", CSV)

    app = build_app(settings, registry_transport=httpx.MockTransport(registry.handle))
    completions = Completions(infra.kafka_bootstrap, model)
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap)
    await completions.start()
    await producer.start()
    try:
        async with app.router.lifespan_context(app):
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://b")
            await ready(client)

            # 1. the API: 100k Parquet rows with the champion
            started = time.perf_counter()
            body = {
                "model_name": model,
                "input_uri": f"s3://{settings.bucket}/in/{unique}/big.parquet",
            }
            accepted = await client.post("/batch-jobs", json=body)
            assert accepted.status_code == 202, accepted.text
            job_id = accepted.json()["job_id"]
            done = await completions.wait_for(job_id)
            assert (done.version, done.rows, done.failed_rows) == (2, ROWS, 0)
            assert done.output_uri.endswith(f"in/{unique}/big.scores.parquet")
            assert done.causation_id is None
            out = pq.read_table(io.BytesIO(await store.get(f"in/{unique}/big.scores.parquet")))
            assert out.num_rows == ROWS and out["id"].to_pylist()[:3] == [0, 1, 2]
            np.testing.assert_allclose(out["score"].to_numpy(), models[2].predict_proba(X))
            job = (await client.get(f"/batch-jobs/{job_id}")).json()
            assert job["state"] == "succeeded" and job["rows_done"] == ROWS
            assert [c["rows"] for c in job["chunks"]] == [50_000, 50_000]
            assert time.perf_counter() - started < 20

            # 2. the event, delivered twice: a CSV with bad rows, with the named version 1
            request = BatchScoringRequested(
                model_name=model,
                job_id=f"evt-{unique}",
                input_uri=f"in/{unique}/small.csv",
                output_uri=f"out/{unique}/small.csv",
                version=1,
            )
            # the second copy has a new event id: only the job id can tell it is the same job
            again = request.model_copy(update={"event_id": uuid.uuid4()})
            for event in (request, again):
                record = encode(event)
                headers = [(k, v.encode()) for k, v in record.headers.items()]
                await producer.send_and_wait(
                    record.topic, record.value, key=record.key, headers=headers
                )
            done = await completions.wait_for(request.job_id)
            assert (done.version, done.rows, done.failed_rows) == (1, 7, 4)
            assert done.correlation_id == request.correlation_id
            assert done.causation_id == request.event_id
            options = pv.ConvertOptions(strings_can_be_null=True)
            table = pv.read_csv(
                io.BytesIO(await store.get(f"out/{unique}/small.csv")), convert_options=options
            )
            assert table["id"].to_pylist() == [1, 2, 3, 4, 5, 7]
            assert table["error"].to_pylist() == [
                None,
                "age: not_a_number",
                "age: missing",
                None,
                "age: non_finite",
                None,
            ]
            errors = (await store.get(f"out/{unique}/small.errors.csv")).decode()
            assert "malformed_row" in errors and '"6,2"' in errors

            # 3. a cron fire: published as a request, run by the batch consumer
            at = datetime(2026, 1, 1, 2, tzinfo=UTC)
            schedule = BatchSchedule(cron="0 2 * * *", input_uri=f"in/{unique}/small.csv")
            fire = Fire(model, schedule, at, fire_id(SCHEDULE_NAMESPACE, model, at))
            bus, producer_name = app.state.bus, settings.service_name
            await schedule_fired(fire, publisher=bus, producer=producer_name)
            await schedule_fired(fire, publisher=bus, producer=producer_name)  # another replica
            cron = await completions.wait_for(fire_job_id(fire.id))
            assert cron.output_uri == f"in/{unique}/small.scores.csv" and cron.version == 2

            await asyncio.sleep(0.5)  # room for a duplicate to show up, if there were one
            ids = [e.job_id for e in completions.events]
            assert sorted(ids) == sorted([job_id, request.job_id, fire_job_id(fire.id)])
            listed = (await client.get("/batch-jobs", params={"model_name": model})).json()
            assert {j["job_id"] for j in listed} == set(ids)
            assert {j["state"] for j in listed} == {"succeeded"}
    finally:
        await producer.stop()
        await completions.stop()


async def test_store_boundaries_on_real_servers(
    infra, service_env, unique, monkeypatch, make_model
):
    """The issue's attack, against real S3: a batch job aimed at a hold-out snapshot under
    datasets/, at other schemes, buckets and paths. Every one is refused (422 with the reason,
    or a failed job for the event), the bucket holds exactly what it held, and a job inside the
    bounds still runs."""
    for key, value in service_env.items():
        monkeypatch.setenv(key, value)
    settings = BatchSettings(
        instance_id=f"batch-bounds-{unique}", registry_url="http://registry.test"
    )
    model = f"bounds-{unique}"
    store = build_object_store(settings)
    registry = Registry(model)
    m = make_model(coef=[1.0, 0.0])
    view = version_view(model, 1, m.to_bytes())
    await store.put(view.artifact.uri, m.to_bytes())
    registry.versions[1], registry.champion = view.model_dump(mode="json"), 1
    holdout = b"id,age,income,label\n1,0.5,1,0\n2,1,2,1\n"
    holdout_key = f"datasets/{model}/{sha256_hex(holdout)}.csv"
    assert await store.put_once(holdout_key, holdout, "text/csv")
    await store.put(f"batch/{unique}/day.csv", CSV)
    before = {key: await store.get(key) for key in await store.list()}

    hostile = [
        ({"output_uri": holdout_key}, "protected_prefix"),
        ({"output_uri": f"s3://{settings.bucket}/{holdout_key}"}, "protected_prefix"),
        ({"output_uri": f"artifacts/{model}/x.csv"}, "protected_prefix"),
        ({"output_uri": "file:///tmp/x.csv"}, "bad_scheme"),
        ({"output_uri": "http://169.254.169.254/latest/x.csv"}, "bad_scheme"),
        ({"output_uri": f"s3://other-{unique}/batch/x.csv"}, "wrong_bucket"),
        ({"output_uri": "/etc/x.csv"}, "bad_uri"),
        ({"output_uri": f"batch/{unique}/../../datasets/x.csv"}, "bad_uri"),
        ({"output_uri": f"batch/{unique}/x\u0000.csv"}, "bad_uri"),
        ({"output_uri": f"reports/{unique}/x.csv"}, "outside_prefixes"),
        ({"input_uri": holdout_key}, "outside_prefixes"),
    ]
    app = build_app(settings, registry_transport=httpx.MockTransport(registry.handle))
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap)
    await producer.start()
    try:
        async with app.router.lifespan_context(app):
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://b")
            await ready(client)
            for fields, reason in hostile:
                body = {"model_name": model, "input_uri": f"batch/{unique}/day.csv", **fields}
                refused = await client.post("/batch-jobs", json=body)
                assert refused.status_code == 422, (fields, refused.text)
                assert refused.json()["reason"] == reason, (fields, refused.json())

            # the same attack as an event: recorded as a failed job with the reason
            request = BatchScoringRequested(
                model_name=model,
                job_id=f"evil-{unique}",
                input_uri=f"batch/{unique}/day.csv",
                output_uri=holdout_key,
            )
            record = encode(request)
            headers = [(k, v.encode()) for k, v in record.headers.items()]
            await producer.send_and_wait(
                record.topic, record.value, key=record.key, headers=headers
            )
            fine = await client.post(
                "/batch-jobs",
                json={
                    "model_name": model,
                    "input_uri": f"s3://{settings.bucket}/batch/{unique}/day.csv",
                    "output_uri": f"out/{unique}/day.csv",
                },
            )
            assert fine.status_code == 202, fine.text
            async with asyncio.timeout(30):
                while True:
                    evil = (await client.get(f"/batch-jobs/{request.job_id}")).json()
                    done = (await client.get(f"/batch-jobs/{fine.json()['job_id']}")).json()
                    if evil.get("state") == "failed" and done["state"] == "succeeded":
                        break
                    await asyncio.sleep(0.1)
            assert evil["error"].startswith("protected_prefix: ")
    finally:
        await producer.stop()

    after = {key: await store.get(key) for key in await store.list()}
    written = {f"out/{unique}/day.csv", f"out/{unique}/day.errors.csv"}
    assert set(after) - set(before) == written
    assert {key: after[key] for key in before} == before
    assert sha256_hex(after[holdout_key]) in holdout_key
