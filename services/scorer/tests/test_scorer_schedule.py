"""Cron schedules with a fake clock: next fire times, firing once per due time, deterministic
job ids, settings from the environment."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from modelbus_scorer.config import ScorerSettings
from modelbus_scorer.schedule import BatchSchedule, Scheduler, fire_job_id, next_fire


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.t = start
        self.slept: list[float] = []

    def now(self) -> datetime:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += timedelta(seconds=seconds)


def at(hour: int, minute: int = 0, day: int = 1) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=UTC)


def test_next_fire_is_strictly_after():
    assert next_fire("0 2 * * *", at(1, 59)) == at(2)
    assert next_fire("0 2 * * *", at(2)) == at(2, day=2)
    assert next_fire("*/15 * * * *", at(2, 7)) == at(2, 15)


def test_fire_job_ids_are_deterministic_per_model_and_time():
    assert fire_job_id("churn", at(2)) == fire_job_id("churn", at(2))
    assert fire_job_id("churn", at(2)) != fire_job_id("churn", at(2, day=2))
    assert fire_job_id("churn", at(2)) != fire_job_id("fraud", at(2))


async def test_the_scheduler_fires_when_due_and_computes_the_next_time():
    clock = FakeClock(at(1, 30))
    fired: list[tuple[str, datetime]] = []

    async def fire(model, schedule, when):
        fired.append((model, when))

    schedules = {
        "churn": BatchSchedule(cron="0 2 * * *", input_uri="in/churn.parquet"),
        "fraud": BatchSchedule(cron="0 * * * *", input_uri="in/fraud.csv"),
    }
    scheduler = Scheduler(schedules, fire, now=clock.now, sleep=clock.sleep)
    assert await scheduler.tick() == []
    assert scheduler.seconds_to_next() == 60.0  # capped; next is 30 min away
    clock.t = at(2)
    assert await scheduler.tick() == [("churn", at(2)), ("fraud", at(2))]
    assert await scheduler.tick() == []  # not twice for the same time
    assert scheduler.next == {"churn": at(2, day=2), "fraud": at(3)}
    clock.t = at(5, 30)  # slept through three hourly fires: fire once, then the next one
    assert await scheduler.tick() == [("fraud", at(3))]
    assert scheduler.next["fraud"] == at(6)
    assert fired == [("churn", at(2)), ("fraud", at(2)), ("fraud", at(3))]


class Stop(Exception):
    pass


async def test_run_forever_sleeps_until_the_next_fire_and_survives_a_failing_fire():
    clock = FakeClock(at(1, 59) + timedelta(seconds=30))
    fired: list[datetime] = []

    async def fire(model, schedule, when):
        fired.append(when)
        if len(fired) == 1:
            raise RuntimeError("bus down")

    async def sleep(seconds: float) -> None:
        if len(clock.slept) == 3:
            raise Stop
        await clock.sleep(seconds)

    scheduler = Scheduler(
        {"m": BatchSchedule(cron="* * * * *", input_uri="in/x.csv")},
        fire,
        now=clock.now,
        sleep=sleep,
    )
    with pytest.raises(Stop):
        await scheduler.run_forever()
    assert clock.slept == [30.0, 60.0, 60.0]
    assert fired == [at(2), at(2, 1), at(2, 2)]  # the failed fire did not stop the loop


def test_schedules_come_from_the_environment_and_bad_cron_is_refused(monkeypatch):
    value = {"churn": {"cron": "0 2 * * *", "input_uri": "in/churn.parquet", "version": 3}}
    monkeypatch.setenv("MODELBUS_BATCH_SCHEDULES", json.dumps(value))
    settings = ScorerSettings()
    assert settings.batch_schedules["churn"].version == 3
    with pytest.raises(ValidationError):
        BatchSchedule(cron="every day at two", input_uri="in/x.csv")
