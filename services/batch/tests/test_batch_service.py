"""Batch jobs on fakes: champion vs named version, verified loading (reused by the next job),
idempotent job ids, one job at a time per model, resume after restart, and the HTTP routes."""

from __future__ import annotations

import io
import uuid

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modelbus_batch.api import build_router
from modelbus_batch.handlers import batch_requested
from modelbus_batch.service import BatchMetrics, BatchService
from modelbus_batch.testing import MemoryJobStore
from modelbus_contracts import BatchScoringCompleted, BatchScoringRequested
from modelbus_embedded.testing import service_app, tiny_model
from modelbus_platform.stores import LocalObjectStore
from modelbus_platform.testing import FakeRegistry, InlineRelay, RecordingPublisher

MODEL = "churn"


class Harness:
    def __init__(self, tmp_path, publish_artifact) -> None:
        self.store = LocalObjectStore(tmp_path / "objects")
        self.registry = FakeRegistry()
        self.jobs = MemoryJobStore()
        self.publisher = RecordingPublisher()
        self.publish_artifact = publish_artifact
        self.batch = self.service()

    def service(self, instance: str = "batch-1") -> BatchService:
        return BatchService(
            jobs=self.jobs,
            store=self.store,
            registry=self.registry,
            events=InlineRelay([self.jobs.outbox], self.publisher),
            metrics=BatchMetrics("batch-test"),
            producer="batch",
            instance=instance,
            chunk_rows=40,
        )

    async def version(self, version: int, coef: list[float], champion: bool = False):
        view = await self.publish_artifact(self.store, MODEL, version, tiny_model(coef=coef))
        return self.registry.put(view, champion=champion)

    async def put_parquet(self, key: str, n: int = 100) -> pa.Table:
        table = pa.table({"id": np.arange(n), "age": np.linspace(-1, 1, n), "income": np.ones(n)})
        sink = io.BytesIO()
        pq.write_table(table, sink)
        await self.store.put(key, sink.getvalue())
        return table

    async def output(self, key: str) -> pa.Table:
        return pq.read_table(io.BytesIO(await self.store.get(key)))


@pytest.fixture
async def h(tmp_path, publish_artifact) -> Harness:
    harness = Harness(tmp_path, publish_artifact)
    await harness.batch.start()
    return harness


async def test_a_job_scores_with_the_champion_and_reports_progress(h):
    await h.version(1, [1.0, 0.0])
    await h.version(2, [-1.0, 0.0], champion=True)
    await h.put_parquet("in/day.parquet")
    job, created = await h.batch.submit(model_name=MODEL, input_uri="in/day.parquet")
    assert created and job.state == "queued" and job.output_uri == "in/day.scores.parquet"
    await h.batch.idle()
    done = await h.batch.get(job.job_id)
    assert done.state == "succeeded" and done.version == 2
    assert (done.rows_total, done.rows_done, done.failed_rows) == (100, 100, 0)
    assert [c.rows for c in done.chunks] == [40, 40, 20]
    out = await h.output("in/day.scores.parquet")
    assert set(out["model_version"].to_pylist()) == {2}
    assert out["score"][0].as_py() > 0.5  # age -1 with coef -1
    [event] = h.publisher.of(BatchScoringCompleted)
    assert (event.job_id, event.version, event.rows, event.failed_rows) == (job.job_id, 2, 100, 0)
    assert event.output_uri == "in/day.scores.parquet" and event.causation_id is None
    assert str(event.correlation_id) == done.correlation_id


async def test_a_named_version_scores_instead_of_the_champion(h):
    await h.version(1, [1.0, 0.0])
    await h.version(2, [-1.0, 0.0], champion=True)
    await h.put_parquet("in/day.parquet")
    job, _ = await h.batch.submit(
        model_name=MODEL, input_uri="in/day.parquet", output_uri="out/v1.csv", version=1
    )
    await h.batch.idle()
    assert (await h.batch.get(job.job_id)).version == 1
    text = (await h.store.get("out/v1.csv")).decode().splitlines()
    assert text[0] == '"id","score","label","model_version","error"'
    assert text[1].split(",")[3] == "1"
    assert float(text[1].split(",")[1]) < 0.5  # age -1 with coef +1
    assert h.publisher.of(BatchScoringCompleted)[0].version == 1


async def test_unknown_version_missing_input_and_bad_artifact_fail_the_job(h):
    await h.version(1, [1.0, 0.0], champion=True)
    await h.put_parquet("in/day.parquet")
    unknown, _ = await h.batch.submit(model_name=MODEL, input_uri="in/day.parquet", version=9)
    missing, _ = await h.batch.submit(model_name=MODEL, input_uri="in/none.parquet")
    await h.batch.idle()
    view = await h.version(2, [0.5, 0.0], champion=True)  # not loaded by any job yet
    await h.store.put(view.artifact.uri, b'{"tampered": true}')
    tampered, _ = await h.batch.submit(model_name=MODEL, input_uri="in/day.parquet")
    await h.batch.idle()
    errors = [(await h.batch.get(j.job_id)).error for j in (unknown, missing, tampered)]
    assert errors[0].startswith("unknown_version")
    assert errors[1].startswith("input_missing")
    assert errors[2].startswith("LoadFailed: integrity")
    states = [(await h.batch.get(j.job_id)).state for j in (unknown, missing, tampered)]
    assert states == ["failed"] * 3
    assert h.publisher.of(BatchScoringCompleted) == []
    assert not await h.store.exists("in/day.scores.parquet")


async def test_the_version_the_previous_job_loaded_is_reused_without_a_second_load(h):
    view = await h.version(1, [1.0, 0.0], champion=True)
    await h.put_parquet("in/day.parquet")
    first, _ = await h.batch.submit(model_name=MODEL, input_uri="in/day.parquet")
    await h.batch.idle()
    await h.store.put(view.artifact.uri, b"gone")  # a fresh load would now fail
    second, _ = await h.batch.submit(
        model_name=MODEL, input_uri="in/day.parquet", output_uri="in/again.parquet"
    )
    await h.batch.idle()
    assert [(await h.batch.get(j.job_id)).state for j in (first, second)] == ["succeeded"] * 2
    await h.version(2, [1.0, 0.0], champion=True)  # a new champion is loaded afresh
    third, _ = await h.batch.submit(
        model_name=MODEL, input_uri="in/day.parquet", output_uri="in/v2.parquet"
    )
    await h.batch.idle()
    assert (await h.batch.get(third.job_id)).version == 2


async def test_a_redelivered_request_runs_once_and_completion_is_caused_by_it(h):
    await h.version(1, [1.0, 0.0], champion=True)
    await h.put_parquet("in/day.parquet")
    request = BatchScoringRequested(
        producer="upstream", model_name=MODEL, job_id="job-1", input_uri="in/day.parquet"
    )
    await batch_requested(h.batch, request)
    await batch_requested(h.batch, request)
    await h.batch.idle()
    await batch_requested(h.batch, request)  # after it finished, too
    await h.batch.idle()
    [event] = h.publisher.of(BatchScoringCompleted)
    assert event.correlation_id == request.correlation_id
    assert event.causation_id == request.event_id
    assert [j.job_id for j in await h.batch.list()] == ["job-1"]


async def test_a_request_that_cannot_run_is_recorded_as_failed(h):
    request = BatchScoringRequested(
        producer="upstream", model_name=MODEL, job_id="job-bad", input_uri="in/day.json"
    )
    await batch_requested(h.batch, request)
    job = await h.batch.get("job-bad")
    assert job.state == "failed" and job.error.startswith("unknown_format")


async def test_jobs_of_one_model_run_one_at_a_time(h):
    await h.version(1, [1.0, 0.0], champion=True)
    await h.put_parquet("in/a.parquet", n=400)
    first, _ = await h.batch.submit(model_name=MODEL, input_uri="in/a.parquet")
    second, _ = await h.batch.submit(
        model_name=MODEL, input_uri="in/a.parquet", output_uri="out/b.pq"
    )
    await h.batch.idle()
    a, b = await h.batch.get(first.job_id), await h.batch.get(second.job_id)
    assert a.state == b.state == "succeeded"
    assert b.started_at >= a.finished_at


async def test_jobs_left_unfinished_by_this_instance_are_resumed_at_start(h):
    await h.version(1, [1.0, 0.0], champion=True)
    await h.put_parquet("in/day.parquet")
    job = h.batch._record(MODEL, "in/day.parquet", "in/out.parquet", None, "api", "left", None)
    job.state = "running"
    await h.jobs.create(job)
    other = h.batch._record(MODEL, "in/day.parquet", "in/o2.parquet", None, "api", "theirs", None)
    other.instance = "batch-2"
    await h.jobs.create(other)
    restarted = h.service()
    await restarted.start()
    await restarted.idle()
    assert (await restarted.get("left")).state == "succeeded"
    assert (await restarted.get("theirs")).state == "queued"
    assert await h.store.exists("in/out.parquet")


def api_client(h: Harness) -> httpx.AsyncClient:
    app = service_app(build_router(h.batch))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://batch")


async def test_http_routes(h):
    await h.version(1, [1.0, 0.0], champion=True)
    await h.put_parquet("in/day.parquet")
    body = {"model_name": MODEL, "input_uri": "in/day.parquet", "job_id": "api-1"}
    async with api_client(h) as client:
        accepted = await client.post("/batch-jobs", json=body)
        assert accepted.status_code == 202 and accepted.json()["job_id"] == "api-1"
        assert (await client.post("/batch-jobs", json=body)).status_code == 200
        await h.batch.idle()
        job = (await client.get("/batch-jobs/api-1")).json()
        assert job["state"] == "succeeded" and job["rows_done"] == 100
        listed = (await client.get("/batch-jobs", params={"model_name": MODEL})).json()
        assert [j["job_id"] for j in listed] == ["api-1"]
        assert (await client.get("/batch-jobs/nope")).json()["reason"] == "unknown_job"
        bad = await client.post("/batch-jobs", json={"model_name": MODEL})
        assert (bad.status_code, bad.json()["reason"]) == (422, "bad_request")
        fmt = await client.post(
            "/batch-jobs", json={**body, "input_uri": "in/a.json", "job_id": None}
        )
        assert (fmt.status_code, fmt.json()["reason"]) == (422, "unknown_format")
        h.jobs.down = True
        down = await client.post("/batch-jobs", json={**body, "job_id": uuid.uuid4().hex})
        assert (down.status_code, down.json()["reason"]) == (503, "batch_store_unavailable")
