"""Where a batch job may read and write: the uri checks (pure), the bounds at start (settings and
cron schedules), at the API (422 with the reason, nothing written), for a requested event (a
failed job with the reason) and for a job recorded before the bounds (fails, writes nothing)."""

from __future__ import annotations

import json

import httpx
import pytest
from pydantic import ValidationError

from modelbus_batch.api import build_router
from modelbus_batch.config import BatchSettings
from modelbus_batch.domain import (
    DEFAULT_PREFIXES,
    BadJob,
    StoreBounds,
    job_keys,
    object_key,
)
from modelbus_batch.handlers import batch_requested
from modelbus_batch.service import BatchMetrics, BatchService
from modelbus_batch.testing import MemoryJobStore
from modelbus_contracts import BatchScoringCompleted, BatchScoringRequested
from modelbus_embedded.testing import service_app, tiny_model
from modelbus_platform.stores import sha256_hex
from modelbus_platform.testing import (
    FakeRegistry,
    InlineRelay,
    MemoryObjectStore,
    RecordingPublisher,
)

MODEL = "churn"
BUCKET = "modelbus"
BOUNDS = StoreBounds(BUCKET, ("batch/", "in/"), ("batch/", "out/"))
HOLDOUT = b"age,income,label\n1,2,0\n"
HOLDOUT_KEY = f"datasets/{MODEL}/{sha256_hex(HOLDOUT)}.csv"

# (uri, reason): refused wherever it appears, as an input or an output
HOSTILE = [
    ("file:///etc/passwd.csv", "bad_scheme"),
    ("http://169.254.169.254/latest/meta-data.csv", "bad_scheme"),
    ("https://example.com/batch/x.csv", "bad_scheme"),
    ("S3://modelbus/batch/x.csv", "bad_scheme"),
    ("s3:/modelbus/batch/x.csv", "bad_scheme"),
    ("c:/batch/x.csv", "bad_scheme"),
    ("//evil/batch/x.csv", "bad_scheme"),
    ("s3://other-bucket/batch/x.csv", "wrong_bucket"),
    ("s3://modelbus.evil/batch/x.csv", "wrong_bucket"),
    ("s3:///batch/x.csv", "wrong_bucket"),
    ("/etc/batch.csv", "bad_uri"),
    ("/batch/x.csv", "bad_uri"),
    ("batch/../datasets/churn/x.csv", "bad_uri"),
    ("batch/./x.csv", "bad_uri"),
    ("batch//x.csv", "bad_uri"),
    ("batch\\..\\x.csv", "bad_uri"),
    ("batch/x\x00.csv", "bad_uri"),
    ("batch/x\n.csv", "bad_uri"),
    ("batch/x\u202e.csv", "bad_uri"),  # right-to-left override: shows another name
    ("batch/" + "x" * 1100 + ".csv", "bad_uri"),
]


@pytest.mark.parametrize(("uri", "reason"), HOSTILE)
def test_hostile_uris_are_refused_with_the_reason(uri, reason):
    for check in (BOUNDS.input_key, BOUNDS.output_key):
        with pytest.raises(BadJob) as refused:
            check(uri)
        assert refused.value.reason == reason, refused.value.message
    assert "\x00" not in refused.value.message  # the message shows the uri escaped


def test_plain_keys_and_the_services_bucket_are_accepted():
    assert BOUNDS.input_key("batch/churn/day.csv") == "batch/churn/day.csv"
    assert BOUNDS.input_key(f"s3://{BUCKET}/in/day.parquet") == "in/day.parquet"
    assert BOUNDS.output_key("out/a:b.csv") == "out/a:b.csv"  # a colon inside a key is a name
    assert job_keys("batch/churn/day.csv", None, BOUNDS) == (
        "batch/churn/day.csv",
        "batch/churn/day.scores.csv",
        "batch/churn/day.scores.csv",
    )
    with pytest.raises(BadJob, match="no bucket"):
        object_key("s3://modelbus/in/x.csv", None)  # a service without a bucket takes keys only


@pytest.mark.parametrize(
    ("input_uri", "output_uri", "reason"),
    [
        ("batch/day.csv", HOLDOUT_KEY, "protected_prefix"),
        ("batch/day.csv", f"s3://{BUCKET}/{HOLDOUT_KEY}", "protected_prefix"),
        ("batch/day.csv", "artifacts/churn/x.parquet", "protected_prefix"),
        ("batch/day.csv", "Datasets/churn/x.csv", "protected_prefix"),
        ("batch/day.csv", "in/day.scores.csv", "outside_prefixes"),  # in/ is input-only here
        ("batch/day.csv", "reports/x.csv", "outside_prefixes"),
        ("batchx/day.csv", None, "outside_prefixes"),  # a prefix is a folder, not a string
        (HOLDOUT_KEY, "batch/copy.csv", "outside_prefixes"),
        ("batch/day.csv", "batch/day.csv", "bad_uri"),
        ("in/day.csv", None, "outside_prefixes"),  # its default output would be under in/
    ],
)
def test_inputs_and_outputs_stay_under_their_prefixes(input_uri, output_uri, reason):
    with pytest.raises(BadJob) as refused:
        job_keys(input_uri, output_uri, BOUNDS)
    assert refused.value.reason == reason, refused.value.message


@pytest.mark.parametrize(
    "outputs",
    [("datasets/",), ("datasets/churn",), ("artifacts",), ("Artifacts/",), ("data",), ("d",)],
)
def test_no_output_prefix_may_cover_datasets_or_artifacts(outputs):
    if outputs in (("data",), ("d",)):  # prefixes are folders: data/ does not cover datasets/
        assert StoreBounds(BUCKET, outputs=outputs).outputs == (outputs[0] + "/",)
        return
    with pytest.raises(ValueError, match="overlaps datasets/ or artifacts/"):
        StoreBounds(BUCKET, outputs=outputs)


@pytest.mark.parametrize("prefix", ["", "/", "/abs/", "../up/", "a//b/", "file://x/", "a\x00/"])
def test_a_prefix_that_is_not_a_clean_key_prefix_is_refused(prefix):
    with pytest.raises(ValueError, match="bad store prefix"):
        StoreBounds(BUCKET, inputs=(prefix,))


def settings_with(monkeypatch, **env: object) -> BatchSettings:
    for name, value in env.items():
        monkeypatch.setenv(f"MODELBUS_{name.upper()}", json.dumps(value))
    return BatchSettings()


def test_prefixes_come_from_the_environment(monkeypatch):
    assert BatchSettings().store_bounds() == StoreBounds("modelbus", DEFAULT_PREFIXES)
    settings = settings_with(
        monkeypatch, batch_input_prefixes=["landing"], batch_output_prefixes=["scored/"]
    )
    bounds = settings.store_bounds()
    assert (bounds.inputs, bounds.outputs) == (("landing/",), ("scored/",))


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"batch_output_prefixes": ["datasets/"]}, "overlaps datasets/"),
        ({"batch_input_prefixes": ["file:///"]}, "bad store prefix"),
        (
            {"batch_schedules": {MODEL: {"cron": "0 2 * * *", "input_uri": "file:///x.csv"}}},
            "bad_scheme",
        ),
        (
            {
                "batch_schedules": {
                    MODEL: {"cron": "0 2 * * *", "input_uri": "in/x.csv", "output_uri": HOLDOUT_KEY}
                }
            },
            "protected_prefix",
        ),
        (
            {"batch_schedules": {MODEL: {"cron": "0 2 * * *", "input_uri": "s3://other/x.csv"}}},
            "wrong_bucket",
        ),
    ],
)
def test_the_service_refuses_to_start_with_bounds_or_schedules_outside_them(
    monkeypatch, env, words
):
    with pytest.raises(ValidationError, match=words):
        settings_with(monkeypatch, **env)


# --- the service: API, events, recorded jobs ---------------------------------------------------


class Harness:
    def __init__(self, publish_artifact) -> None:
        self.store = MemoryObjectStore()
        self.registry = FakeRegistry()
        self.jobs = MemoryJobStore()
        self.publisher = RecordingPublisher()
        self.publish_artifact = publish_artifact
        self.batch = BatchService(
            jobs=self.jobs,
            store=self.store,
            registry=self.registry,
            events=InlineRelay([self.jobs.outbox], self.publisher),
            metrics=BatchMetrics("batch-bounds"),
            producer="batch",
            instance="batch-1",
            bucket=BUCKET,
            input_prefixes=BOUNDS.inputs,
            output_prefixes=BOUNDS.outputs,
        )

    async def arrange(self) -> dict[str, bytes]:
        view = await self.publish_artifact(self.store, MODEL, 1, tiny_model(coef=[1.0, 0.0]))
        self.registry.put(view, champion=True)
        await self.store.put_once(HOLDOUT_KEY, HOLDOUT, "text/csv")
        await self.store.put("batch/day.csv", b"id,age,income\n1,0.5,1\n")
        return dict(self.store.objects)


@pytest.fixture
async def h(publish_artifact) -> Harness:
    harness = Harness(publish_artifact)
    await harness.batch.start()
    return harness


@pytest.mark.parametrize(
    ("field", "uri", "reason"),
    [
        ("output_uri", HOLDOUT_KEY, "protected_prefix"),
        ("output_uri", "s3://other-bucket/batch/x.csv", "wrong_bucket"),
        ("input_uri", "file:///etc/passwd.csv", "bad_scheme"),
        ("output_uri", "http://169.254.169.254/latest/x.csv", "bad_scheme"),
        ("output_uri", "/tmp/x.csv", "bad_uri"),
        ("output_uri", "batch/../datasets/churn/x.csv", "bad_uri"),
        ("output_uri", "batch/x\x00.csv", "bad_uri"),
        ("input_uri", HOLDOUT_KEY, "outside_prefixes"),
    ],
)
async def test_the_api_answers_422_with_the_reason_and_writes_nothing(h, field, uri, reason):
    before = await h.arrange()
    body = {"model_name": MODEL, "input_uri": "batch/day.csv", field: uri}
    app = service_app(build_router(h.batch))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://b") as c:
        response = await c.post("/batch-jobs", json=body)
    assert response.status_code == 422
    assert response.json()["reason"] == reason, response.json()
    await h.batch.idle()
    assert h.store.objects == before and await h.batch.list() == []


async def test_a_requested_job_outside_the_bounds_fails_with_the_reason(h):
    before = await h.arrange()
    request = BatchScoringRequested(
        producer="upstream",
        model_name=MODEL,
        job_id="overwrite-holdout",
        input_uri="batch/day.csv",
        output_uri=f"s3://{BUCKET}/{HOLDOUT_KEY}",
    )
    await batch_requested(h.batch, request)
    await h.batch.idle()
    job = await h.batch.get("overwrite-holdout")
    assert job.state == "failed" and job.error.startswith("protected_prefix: ")
    assert h.store.objects == before and h.store.objects[HOLDOUT_KEY] == HOLDOUT
    assert h.publisher.of(BatchScoringCompleted) == []


async def test_a_job_recorded_before_the_bounds_fails_when_it_runs_and_writes_nothing(h):
    before = await h.arrange()
    job = h.batch._record(MODEL, "batch/day.csv", HOLDOUT_KEY, None, "api", "old", None)
    job.state = "running"  # accepted by an instance without bounds, interrupted
    await h.jobs.create(job)
    await h.batch.start()
    await h.batch.idle()
    resumed = await h.batch.get("old")
    assert resumed.state == "failed" and resumed.error.startswith("protected_prefix: ")
    assert h.store.objects == before


async def test_inside_the_bounds_a_job_runs(h):
    await h.arrange()
    job, _ = await h.batch.submit(
        model_name=MODEL, input_uri=f"s3://{BUCKET}/batch/day.csv", output_uri="out/day.csv"
    )
    await h.batch.idle()
    assert (await h.batch.get(job.job_id)).state == "succeeded"
    assert h.store.objects["out/day.csv"].startswith(b'"id","score"')
