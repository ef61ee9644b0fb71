"""Durable live windows: the LiveStatsStore suite (fake and MongoDB-wire), and a restarted
LiveService continuing a canary / watch with the counts of before, without double counting a
re-delivered batch, merging what two replicas counted."""

from __future__ import annotations

import uuid

import pytest

from modelbus_contracts import ModelEvaluated, ModelRollbackRequested, PredictionMade
from modelbus_deployer.adapters import MongoLiveStats
from modelbus_deployer.config import DeployerSettings
from modelbus_deployer.live_service import LiveService
from modelbus_deployer.rollout import LiveWindow
from modelbus_deployer.testing import MemoryLiveStats
from modelbus_platform.offsets import NoOffsets
from modelbus_platform.settings import ServiceSettings
from modelbus_platform.stores import connect_mongo

FAST = dict(
    canary_steps=[0.1, 0.5],
    canary_step_predictions=200,
    rollback_watch_predictions=300,
    min_live_predictions=100,
    live_checkpoint_s=0.0,
)
KEY = ("churn", 2, 0)


@pytest.fixture(params=["memory", pytest.param("mongo", marks=pytest.mark.integration)])
async def stats(request, unique):
    if request.param == "memory":
        store = MemoryLiveStats()
    else:
        infra = request.getfixturevalue("infra")
        _, db = connect_mongo(ServiceSettings(mongo_uri=infra.mongo_uri, mongo_db=f"ls_{unique}"))
        store = MongoLiveStats(db)
    await store.init()
    return store


def prediction(version, served_by="champion", latency=1.0):
    return PredictionMade(
        producer="scorer",
        model_name="churn",
        prediction_id=uuid.uuid4().hex,
        version=version,
        features={"x1": 0.0},
        score=0.9,
        label=1,
        served_by=served_by,
        latency_ms=latency,
    )


def canaries(n, latency=1.0):
    return [prediction(2, "canary", latency) for _ in range(n)]


class Offsets(NoOffsets):
    """The watch group's offsets: how often a commit was asked for, by kind."""

    def __init__(self) -> None:
        self.after_batch = self.commits = 0

    def commit_after_batch(self) -> None:
        self.after_batch += 1

    async def commit(self, covered) -> bool:
        self.commits += 1
        return True


def replica(world, stats, monotonic=None, offsets=None) -> LiveService:
    """One deployer process: its own tracker, the shared decision and live-stats stores."""
    service = world.service()
    live = LiveService(
        settings=world.settings,
        decisions=world.decisions,
        events=service.events,
        deployer=service,
        stats=stats,
        offsets=offsets,
        **({"monotonic": monotonic} if monotonic else {}),
    )
    service.on_stage = live.note
    return live


async def started(world, stats) -> LiveService:
    live = replica(world, stats)
    event = await world.registered(world.models.good, 2, champion=(world.models.bad, 1))
    await live.deployer.handle_registered(event)
    return live


def evaluated(world) -> list[ModelEvaluated]:
    return world.publisher.of(ModelEvaluated)


# --- the port ----------------------------------------------------------------------------------


async def test_save_is_a_compare_and_set_on_the_revision(stats):
    window = LiveWindow()
    for latency in (1.5, 2.25, 300.0):
        window.arm.predicted(latency)
    window.shadow_failed("r1: boom")
    checkpoint = {"window": window.to_dict(), "recent_ids": ["a", "b"]}

    assert await stats.load(KEY) is None
    assert await stats.save(KEY, 0, checkpoint)
    assert not await stats.save(KEY, 0, checkpoint)  # someone else created it first
    assert await stats.save(KEY, 1, {**checkpoint, "recent_ids": ["a", "b", "c"]})
    assert not await stats.save(KEY, 1, checkpoint)  # stale revision

    stored = await stats.load(KEY)
    assert stored["rev"] == 2 and stored["recent_ids"] == ["a", "b", "c"]
    assert LiveWindow.from_dict(stored["window"]).to_dict() == window.to_dict()
    assert await stats.load(("churn", 2, 1)) is None  # the next stage is another window


async def test_delete_forgets_and_a_late_writer_does_not_resurrect(stats):
    await stats.save(KEY, 0, {"window": LiveWindow().to_dict(), "recent_ids": []})
    await stats.save(("other", 1, 0), 0, {"window": LiveWindow().to_dict(), "recent_ids": []})

    await stats.delete(KEY)

    assert await stats.load(KEY) is None
    assert not await stats.save(KEY, 1, {"window": LiveWindow().to_dict(), "recent_ids": []})
    assert (await stats.load(("other", 1, 0)))["rev"] == 1


# --- a restarted deployer ------------------------------------------------------------------------


async def test_a_restarted_deployer_continues_the_canary_step(make_world, stats):
    world = make_world(DeployerSettings(rollout="canary", **FAST))
    before = await started(world, stats)
    assert await before.handle(canaries(150)) == {"churn": "wait"}

    after = replica(world, stats)  # the process restarted: nothing in memory
    assert await after.handle(canaries(49)) == {"churn": "wait"}
    assert await after.handle(canaries(1)) == {"churn": "canary"}

    step = evaluated(world)[-1]
    assert (step.rollout.fraction, step.live_metrics["predictions"]) == (0.5, 200)
    assert await stats.load(KEY) is None  # the decided stage's checkpoint is gone


async def test_a_regression_straddling_a_restart_of_the_watch_is_caught(make_world, stats):
    world = make_world(DeployerSettings(**FAST))
    before = await started(world, stats)  # immediate: promoted, watched at stage 0
    assert await before.handle([prediction(2) for _ in range(90)]) == {"churn": "wait"}

    after = replica(world, stats)
    outcome = await after.handle([prediction(1, "fallback") for _ in range(20)])

    assert outcome == {"churn": "rollback_requested"}  # 20 of 110, not 20 of 20 (too few)
    [request] = world.publisher.of(ModelRollbackRequested)
    assert (request.evidence["predictions"], request.evidence["fallbacks"]) == (90, 20)


async def test_a_batch_redelivered_after_a_crash_is_not_counted_twice(make_world, stats):
    world = make_world(DeployerSettings(rollout="canary", **FAST))
    before = await started(world, stats)
    batch = canaries(150)
    await before.handle(batch)  # checkpointed, then the process died before the commit

    after = replica(world, stats)
    assert await after.handle([*batch, *canaries(49)]) == {"churn": "wait"}  # 199, not 349
    assert await after.handle(canaries(1)) == {"churn": "canary"}
    assert evaluated(world)[-1].live_metrics["predictions"] == 200


async def test_a_step_decided_while_the_broker_is_down_is_published_later_counted_once(
    make_world, stats, flaky_publisher
):
    world = make_world(DeployerSettings(rollout="canary", **FAST))
    live = await started(world, stats)
    flaky = flaky_publisher(failures=1)
    live.events = live.deployer.events = world.relay(flaky)
    batch = canaries(200)

    assert await live.handle(batch) == {"churn": "canary"}
    assert flaky.of(ModelEvaluated) == []  # the broker refused it: it waits in the outbox
    assert await live.handle(batch) == {"churn": "idle"}  # a redelivery: decided already
    await live.events.drain()

    [step] = flaky.of(ModelEvaluated)
    assert step.live_metrics["predictions"] == 200


async def test_two_replicas_count_into_one_window(make_world, stats):
    world = make_world(DeployerSettings(rollout="canary", **FAST))
    first = await started(world, stats)
    second = replica(world, stats)

    assert await first.handle(canaries(120)) == {"churn": "wait"}
    assert await second.handle(canaries(79, latency=2.0)) == {"churn": "wait"}
    assert await first.handle(canaries(1)) == {"churn": "canary"}  # merged: 120 + 79 + 1

    step = evaluated(world)[-1]
    assert step.live_metrics["predictions"] == 200
    assert step.live_metrics["latency_p99_ms"] == pytest.approx(2.0)


async def test_throttled_checkpoints_are_flushed_periodically_and_on_shutdown(make_world):
    world = make_world(DeployerSettings(rollout="canary", **{**FAST, "live_checkpoint_s": 60}))
    stats, offsets = MemoryLiveStats(), Offsets()
    before = replica(world, stats, monotonic=lambda: 0.0, offsets=offsets)
    event = await world.registered(world.models.good, 2, champion=(world.models.bad, 1))
    await before.deployer.handle_registered(event)
    await before.handle(canaries(100))  # the first batch is checkpointed
    assert offsets.after_batch == 1  # ... and so its offsets may be committed
    await before.handle(canaries(50))  # within 60 s: not yet, nor its offsets
    assert LiveWindow.from_dict(stats.docs[KEY]["window"]).arm.predictions == 100
    assert (offsets.after_batch, offsets.commits) == (1, 0)

    assert await before.flush()  # the periodic flush: a quiet stream is checkpointed too

    assert LiveWindow.from_dict(stats.docs[KEY]["window"]).arm.predictions == 150
    assert offsets.commits == 1
    await before.close()  # and once more at shutdown
    assert offsets.commits == 2
    after = replica(world, stats)
    assert await after.handle(canaries(50)) == {"churn": "canary"}


async def test_a_failing_checkpoint_does_not_fail_the_batch(make_world):
    class Down(MemoryLiveStats):
        async def save(self, key, rev, checkpoint):
            raise ConnectionError("mongo down")

    world = make_world(DeployerSettings(rollout="canary", **FAST))
    live = await started(world, Down())
    live.offsets = offsets = Offsets()

    assert await live.handle(canaries(120)) == {"churn": "wait"}
    assert await live.handle(canaries(80)) == {"churn": "canary"}  # judged on what is in memory
    assert offsets.after_batch == 0  # nothing saved, nothing committed: a crash replays it
