"""Cron batch jobs: schedules from the environment, and what a fire publishes (deterministic
job and event ids, the schedule's file and version). The scheduler itself is the platform's
(``libs/platform/tests/test_scheduler.py``)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from modelbus_batch.config import BatchSettings
from modelbus_batch.domain import (
    SCHEDULE_NAMESPACE,
    BatchSchedule,
    event_job_id,
    fire_job_id,
    scheduled_request,
)
from modelbus_batch.handlers import schedule_fired
from modelbus_contracts import BatchScoringRequested
from modelbus_platform.scheduler import Fire, fire_id
from modelbus_platform.testing import RecordingPublisher

NIGHTLY = BatchSchedule(cron="0 2 * * *", input_uri="in/churn.parquet", version=3)


def fire(model: str, day: int = 1) -> Fire[BatchSchedule]:
    at = datetime(2026, 3, day, 2, tzinfo=UTC)
    return Fire(model, NIGHTLY, at, fire_id(SCHEDULE_NAMESPACE, model, at))


def test_a_fire_asks_for_one_deterministic_job():
    request, again = (scheduled_request(fire("churn"), "batch") for _ in range(2))
    assert (request.job_id, request.event_id) == (again.job_id, again.event_id)  # replicas agree
    assert request.job_id == fire_job_id(fire("churn").id)
    assert request.event_id == event_job_id(request.job_id, BatchScoringRequested.event_type)
    assert (request.model_name, request.input_uri, request.output_uri, request.version) == (
        "churn",
        "in/churn.parquet",
        None,
        3,
    )
    assert request.job_id != scheduled_request(fire("churn", day=2), "batch").job_id
    assert request.job_id != scheduled_request(fire("fraud"), "batch").job_id


def test_cron_job_ids_are_the_ones_earlier_releases_derived():
    at = datetime(2026, 1, 1, 2, tzinfo=UTC)
    expected = uuid.uuid5(SCHEDULE_NAMESPACE, f"churn/{at.isoformat()}").hex
    assert fire_job_id(fire_id(SCHEDULE_NAMESPACE, "churn", at)) == f"cron-{expected}"


async def test_a_fire_publishes_its_request():
    publisher = RecordingPublisher()
    await schedule_fired(fire("churn"), publisher=publisher, producer="batch")
    [request] = publisher.of(BatchScoringRequested)
    assert request.job_id == fire_job_id(fire("churn").id) and request.producer == "batch"


def test_schedules_come_from_the_environment_and_bad_cron_is_refused(monkeypatch):
    value = {"churn": {"cron": "0 2 * * *", "input_uri": "in/churn.parquet", "version": 3}}
    monkeypatch.setenv("MODELBUS_BATCH_SCHEDULES", json.dumps(value))
    settings = BatchSettings()
    assert settings.batch_schedules["churn"].version == 3
    assert (settings.service_name, settings.http_port) == ("batch", 8006)
    with pytest.raises(ValidationError):
        BatchSchedule(cron="every day at two", input_uri="in/x.csv")
