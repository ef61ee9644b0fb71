"""Scheduled retraining: schedules from settings, what a cron fire publishes (a deterministic
TrainingRequested with its data window), and the trainer's scheduler on a fake clock. The
scheduler's own rules (no catch-up, retries, sleeps) are tested in the platform."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from functools import partial

import pytest
from pydantic import ValidationError
from trainer_fixtures import T0, Clock

from modelbus_contracts import TrainingRequested
from modelbus_platform.scheduler import CronScheduler, Fire, fire_id
from modelbus_platform.testing import RecordingPublisher
from modelbus_trainer.config import ScheduleSpec, TrainerSettings
from modelbus_trainer.domain import NAMESPACE, scheduled_event
from modelbus_trainer.handlers import schedule_fired

EVERY_5_MIN = ScheduleSpec(cron="*/5 * * * *", since_hours=2)
NIGHTLY = ScheduleSpec(cron="0 3 * * *", dataset_uri="datasets/n/abc.csv")


def fire(model: str, spec: ScheduleSpec, at) -> Fire[ScheduleSpec]:
    return Fire(model, spec, at, fire_id(NAMESPACE, model, at))


def test_schedules_come_from_settings_json_and_bad_cron_is_refused(monkeypatch):
    monkeypatch.setenv("MODELBUS_SCHEDULES", '{"m": {"cron": "0 3 * * *", "since_hours": 24}}')
    assert TrainerSettings().schedules["m"].since_hours == 24
    with pytest.raises(ValidationError, match="not a cron expression"):
        ScheduleSpec(cron="every tuesday")


def test_a_scheduled_event_is_deterministic_and_carries_its_data_window():
    at = T0 + timedelta(minutes=5)
    event = scheduled_event(fire("m", EVERY_5_MIN, at))
    assert event.event_id == scheduled_event(fire("m", EVERY_5_MIN, at)).event_id  # replicas
    later = fire("m", EVERY_5_MIN, at + timedelta(minutes=5))
    assert event.event_id != scheduled_event(later).event_id
    assert (event.reason, event.since, event.dataset_uri) == (
        "schedule",
        at - timedelta(hours=2),
        None,
    )
    nightly = scheduled_event(fire("n", NIGHTLY, at))
    assert nightly.dataset_uri == "datasets/n/abc.csv" and nightly.since is None


async def test_the_trainer_scheduler_publishes_each_fire_on_a_fake_clock():
    clock = Clock(T0 + timedelta(seconds=10))
    publisher = RecordingPublisher()

    async def fake_sleep(seconds: float) -> None:
        clock.advance(seconds)
        if len(publisher.events) >= 3:
            raise asyncio.CancelledError

    scheduler = CronScheduler(
        {"m": EVERY_5_MIN},
        partial(schedule_fired, publisher=publisher),
        namespace=NAMESPACE,
        clock=clock,
        sleep=fake_sleep,
        max_sleep_s=120,
    )
    with pytest.raises(asyncio.CancelledError):
        await scheduler.run()
    events = publisher.of(TrainingRequested)
    fired = [e.since + timedelta(hours=2) for e in events]
    assert fired == [T0 + timedelta(minutes=m) for m in (5, 10, 15)]
    assert [e.model_name for e in events] == ["m"] * 3 and events[0].reason == "schedule"
