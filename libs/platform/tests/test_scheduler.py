"""The cron scheduler on a fake clock: fire times in UTC, deterministic fire ids, no catch-up after
a start or a pause, a failed fire retried for the same time, and the loop's sleeps."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from modelbus_platform.scheduler import CronScheduler, CronSpec, Fire, fire_id, next_fire

NAMESPACE = uuid.UUID("00000000-0000-4000-8000-000000000001")
T0 = datetime(2026, 3, 1, tzinfo=UTC)


class Spec(CronSpec):
    what: str = "x"


def at(hour: int, minute: int = 0, day: int = 1) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)


class Recorder:
    """A ``fire`` callback that records its fires and fails the ones it is told to."""

    def __init__(self, failures: int = 0) -> None:
        self.fires: list[Fire[Spec]] = []
        self.failures = failures

    async def __call__(self, fire: Fire[Spec]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker down")
        self.fires.append(fire)


def scheduler(schedules: dict[str, Spec], fire: Recorder, **kwargs) -> CronScheduler[Spec]:
    return CronScheduler(schedules, fire, namespace=NAMESPACE, **kwargs)


def test_next_fire_is_strictly_after_and_in_utc():
    assert next_fire("0 2 * * *", at(1, 59)) == at(2)
    assert next_fire("0 2 * * *", at(2)) == at(2, day=2)
    assert next_fire("*/15 * * * *", at(2, 7)) == at(2, 15)
    local = datetime(2026, 3, 1, 3, 30, tzinfo=UTC).astimezone()  # same instant, local zone
    assert next_fire("0 4 * * *", local) == at(4)
    assert next_fire("0 4 * * *", local).tzinfo == UTC


def test_fire_ids_are_deterministic_per_key_and_time():
    assert fire_id(NAMESPACE, "churn", at(2)) == fire_id(NAMESPACE, "churn", at(2))
    assert fire_id(NAMESPACE, "churn", at(2)) != fire_id(NAMESPACE, "churn", at(2, day=2))
    assert fire_id(NAMESPACE, "churn", at(2)) != fire_id(NAMESPACE, "fraud", at(2))
    other = uuid.UUID("00000000-0000-4000-8000-000000000002")
    assert fire_id(NAMESPACE, "churn", at(2)) != fire_id(other, "churn", at(2))


def test_a_bad_cron_is_refused():
    assert Spec(cron="0 2 * * *").cron == "0 2 * * *"
    with pytest.raises(ValidationError, match="not a cron expression"):
        Spec(cron="every day at two")


async def test_each_schedule_fires_when_due_once_and_computes_its_next_time():
    fired = Recorder()
    s = scheduler({"churn": Spec(cron="0 2 * * *"), "fraud": Spec(cron="0 * * * *")}, fired)
    s.start_from(at(1, 30))
    assert await s.fire_due(at(1, 59)) == []
    done = await s.fire_due(at(2))
    assert [(f.key, f.at) for f in done] == [("churn", at(2)), ("fraud", at(2))]
    assert done[0].id == fire_id(NAMESPACE, "churn", at(2)) and done[0].spec.cron == "0 2 * * *"
    assert await s.fire_due(at(2)) == []  # not twice for the same time
    assert s.next_at == {"churn": at(2, day=2), "fraud": at(3)}
    assert fired.fires == done


async def test_fires_missed_before_the_start_or_during_a_pause_fire_once_for_the_latest():
    fired = Recorder()
    s = scheduler({"fraud": Spec(cron="0 * * * *")}, fired)
    s.start_from(at(1, 30))  # 00:00 and 01:00 were before the start: never fired
    assert s.next_at["fraud"] == at(2)
    [late] = await s.fire_due(at(5, 30))  # slept through 02:00..05:00
    assert late.at == at(5) and s.next_at["fraud"] == at(6)
    assert [f.at for f in fired.fires] == [at(5)]


async def test_a_failed_fire_is_retried_on_the_next_wake_up_for_the_same_time():
    fired = Recorder(failures=1)
    s = scheduler({"m": Spec(cron="*/5 * * * *")}, fired, retry_s=0.5)
    s.start_from(T0)
    due = T0 + timedelta(minutes=5)
    assert await s.fire_due(due) == []
    assert s.next_at["m"] == due  # not advanced
    assert s.seconds_to_next(due) == 0.5  # overdue: retried soon, without spinning
    [retried] = await s.fire_due(due + timedelta(seconds=1))
    assert (retried.at, retried.id) == (due, fire_id(NAMESPACE, "m", due))
    assert s.next_at["m"] == T0 + timedelta(minutes=10)


async def test_the_loop_sleeps_until_each_fire_capped_by_max_sleep():
    clock = Clock(T0 + timedelta(seconds=10))
    fired = Recorder(failures=1)

    async def sleep(seconds: float) -> None:
        await clock.sleep(seconds)
        if len(fired.fires) >= 3:
            raise asyncio.CancelledError

    s = scheduler({"m": Spec(cron="*/5 * * * *")}, fired, clock=clock, sleep=sleep, max_sleep_s=120)
    with pytest.raises(asyncio.CancelledError):
        await s.run()
    assert [f.at for f in fired.fires] == [T0 + timedelta(minutes=m) for m in (5, 10, 15)]
    assert max(clock.slept) <= 120
    assert 0.5 in clock.slept  # the first fire failed and was retried half a second later
    assert sum(clock.slept[:-1]) == pytest.approx(15 * 60 - 10)


async def test_without_schedules_the_loop_returns_at_once():
    clock = Clock(T0)
    await scheduler({}, Recorder(), clock=clock, sleep=clock.sleep).run()
    assert clock.slept == []


async def test_a_live_scheduler_takes_schedules_set_changed_and_removed_while_it_runs():
    fired, clock = Recorder(), Clock(at(1, 30))
    s = scheduler({}, fired, clock=clock, max_sleep_s=0.01, retry_s=0.01, live=True)
    task = asyncio.create_task(s.run())
    await asyncio.sleep(0.05)
    assert not task.done(), "a live scheduler keeps running with no schedule"
    assert s.set("churn", Spec(cron="0 2 * * *"), clock.now)
    assert not s.set("churn", Spec(cron="0 2 * * *"), clock.now), "the same spec: no change"
    assert s.next_at == {"churn": at(2)}
    assert [(f.key, f.at) for f in await s.fire_due(at(2))] == [("churn", at(2))]
    assert s.set("churn", Spec(cron="30 * * * *", what="y"), at(2, 5))
    assert s.next_at == {"churn": at(2, 30)}
    assert s.set("churn", None, at(2, 10))
    assert (s.schedules, s.next_at) == ({}, {})
    assert await s.fire_due(at(9)) == []
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
