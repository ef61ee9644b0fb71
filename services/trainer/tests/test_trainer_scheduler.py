"""Scheduled retraining on a fake clock: cron fire times, deterministic event ids, no catch-up
storm after a pause, failed publishes retried, and the loop sleeping until the next fire."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from pydantic import ValidationError
from trainer_fixtures import T0, Clock

from modelbus_contracts import TrainingRequested
from modelbus_platform.bus import RecordingPublisher
from modelbus_trainer.config import ScheduleSpec, TrainerSettings
from modelbus_trainer.scheduler import RetrainScheduler, next_fire, scheduled_event

EVERY_5_MIN = ScheduleSpec(cron="*/5 * * * *", since_hours=2)
NIGHTLY = ScheduleSpec(cron="0 3 * * *", dataset_uri="datasets/n/abc.csv")


def test_next_fire_follows_the_cron_in_utc():
    assert next_fire("*/5 * * * *", T0) == T0 + timedelta(minutes=5)
    assert next_fire("0 3 * * *", T0 + timedelta(hours=4)) == T0 + timedelta(days=1, hours=3)


def test_schedules_come_from_settings_json_and_bad_cron_is_refused(monkeypatch):
    monkeypatch.setenv("MODELBUS_SCHEDULES", '{"m": {"cron": "0 3 * * *", "since_hours": 24}}')
    assert TrainerSettings().schedules["m"].since_hours == 24
    with pytest.raises(ValidationError, match="not a cron expression"):
        ScheduleSpec(cron="every tuesday")


def test_a_scheduled_event_is_deterministic_and_carries_its_data_window():
    fire = T0 + timedelta(minutes=5)
    event = scheduled_event("m", EVERY_5_MIN, fire)
    assert event.event_id == scheduled_event("m", EVERY_5_MIN, fire).event_id  # replicas agree
    assert event.event_id != scheduled_event("m", EVERY_5_MIN, fire + timedelta(minutes=5)).event_id
    assert (event.reason, event.since, event.dataset_uri) == (
        "schedule",
        fire - timedelta(hours=2),
        None,
    )
    nightly = scheduled_event("n", NIGHTLY, fire)
    assert nightly.dataset_uri == "datasets/n/abc.csv" and nightly.since is None


async def test_fire_due_publishes_each_model_when_its_time_comes():
    publisher = RecordingPublisher()
    scheduler = RetrainScheduler({"m": EVERY_5_MIN, "n": NIGHTLY}, publisher)
    scheduler.start_from(T0)
    assert await scheduler.fire_due(T0 + timedelta(minutes=4)) == []
    [fired] = await scheduler.fire_due(T0 + timedelta(minutes=5))
    assert fired.model_name == "m"
    assert scheduler.next_at["m"] == T0 + timedelta(minutes=10)
    # a long pause: one event for the latest missed fire time, not one per missed slot
    late = await scheduler.fire_due(T0 + timedelta(hours=5, minutes=2))
    assert sorted(e.model_name for e in late) == ["m", "n"]
    assert scheduler.next_at["m"] == T0 + timedelta(hours=5, minutes=5)
    assert len(publisher.of(TrainingRequested)) == 3


async def test_a_failed_publish_is_retried_on_the_next_wake_up():
    class Flaky(RecordingPublisher):
        fail = True

        async def publish(self, event):
            if self.fail:
                self.fail = False
                raise ConnectionError("broker down")
            await super().publish(event)

    publisher = Flaky()
    scheduler = RetrainScheduler({"m": EVERY_5_MIN}, publisher)
    scheduler.start_from(T0)
    due = T0 + timedelta(minutes=5)
    assert await scheduler.fire_due(due) == []
    assert scheduler.seconds_to_next(due) == 0.5  # overdue: retried soon, without spinning
    [event] = await scheduler.fire_due(due + timedelta(seconds=1))
    assert event.event_id == scheduled_event("m", EVERY_5_MIN, due).event_id


async def test_the_loop_sleeps_until_each_fire_on_a_fake_clock():
    clock = Clock(T0 + timedelta(seconds=10))
    publisher = RecordingPublisher()
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.advance(seconds)
        if len(publisher.events) >= 3:
            raise asyncio.CancelledError

    scheduler = RetrainScheduler(
        {"m": EVERY_5_MIN}, publisher, clock=clock, sleep=fake_sleep, max_sleep_s=120
    )
    with pytest.raises(asyncio.CancelledError):
        await scheduler.run()
    fired = [e.since + timedelta(hours=2) for e in publisher.of(TrainingRequested)]
    assert fired == [T0 + timedelta(minutes=m) for m in (5, 10, 15)]
    # every sleep is capped, and they add up to exactly the time to the third fire
    assert max(sleeps) <= 120 and sum(sleeps[:-1]) == pytest.approx(15 * 60 - 10)
