"""The deployer's approval, rollout and rollback flows on fakes: decisions advance by
compare-and-set, every step is a ModelEvaluated with its live numbers, a regression after a
promotion is one ModelRollbackRequested, and two replicas never both decide."""

from __future__ import annotations

import uuid

import httpx
import pytest

from modelbus_contracts import (
    LabelObserved,
    ModelEvaluated,
    ModelLoadFailed,
    ModelRollbackRequested,
    PredictionMade,
    ScoringFailed,
)
from modelbus_deployer.api import router
from modelbus_deployer.config import DeployerSettings
from modelbus_deployer.handlers import Deployer
from modelbus_deployer.live_service import LiveService
from modelbus_deployer.service import DecisionConflict
from modelbus_deployer.testing import MemoryLiveStats
from modelbus_embedded.testing import service_app
from modelbus_platform.auth import ApiKeys, Authenticator, AuthMiddleware, MemoryKeyStore
from modelbus_platform.http import ServiceApp

FAST = dict(
    canary_steps=[0.1, 0.5],
    canary_step_predictions=200,
    shadow_min_predictions=200,
    rollback_watch_predictions=300,
    min_live_predictions=100,
)


def prediction(version, served_by="champion", label=1, latency=1.0, shadow_of=None, pid=None):
    return PredictionMade(
        producer="scorer",
        model_name="churn",
        prediction_id=pid or uuid.uuid4().hex,
        version=version,
        features={"x1": 0.0},
        score=0.9 if label else 0.1,
        label=label,
        served_by=served_by,
        latency_ms=latency,
        shadow_of=shadow_of,
    )


def live_for(world, service) -> LiveService:
    live = LiveService(
        settings=world.settings,
        decisions=world.decisions,
        events=world.relay(),
        deployer=service,
        stats=MemoryLiveStats(),
    )
    service.on_stage = live.note
    return live


async def decided(world, version=2):
    service = world.service()
    live = live_for(world, service)
    event = await world.registered(world.models.good, version, champion=(world.models.bad, 1))
    await service.handle_registered(event)
    return service, live


def decisions(world) -> list[tuple[str, float | None]]:
    return [
        (e.decision, e.rollout.fraction if e.rollout else None)
        for e in world.publisher.of(ModelEvaluated)
    ]


async def test_canary_steps_then_promotes_then_rolls_back_once_on_fallbacks(make_world):
    world = make_world(DeployerSettings(rollout="canary", **FAST))
    _, live = await decided(world)
    assert decisions(world) == [("canary", 0.1)]
    assert world.decisions.docs[("churn", 2)]["live"] == "canary"

    champion = [prediction(1) for _ in range(300)]
    outcome = await live.handle(champion + [prediction(2, "canary") for _ in range(200)])
    assert outcome == {"churn": "canary"}
    await live.handle([prediction(2, "canary") for _ in range(199)])
    assert decisions(world)[-1] == ("canary", 0.5)
    await live.handle([prediction(2, "canary") for _ in range(1)])

    assert decisions(world) == [("canary", 0.1), ("canary", 0.5), ("promote", None)]
    step = world.publisher.of(ModelEvaluated)[1]
    assert step.live_metrics["predictions"] == 200
    assert step.gates[0].name == "live_sample_size"
    assert step.causation_id is not None
    doc = world.decisions.docs[("churn", 2)]
    assert (doc["live"], doc["stage"], len(doc["history"])) == ("watch", 2, 3)

    burst = [prediction(2) for _ in range(80)] + [prediction(1, "fallback") for _ in range(40)]
    assert await live.handle(burst) == {"churn": "rollback_requested"}
    await live.handle([prediction(2, "fallback") for _ in range(200)])

    [request] = world.publisher.of(ModelRollbackRequested)
    assert (request.from_version, request.to_version) == (2, 1)
    assert "fallback_rate failed" in request.reason
    assert request.evidence["fallbacks"] == 40
    assert request.correlation_id == world.publisher.of(ModelEvaluated)[0].correlation_id
    doc = world.decisions.docs[("churn", 2)]
    assert doc["watch"]["status"] == "rollback_requested"
    assert doc["watch"]["event_id"] == str(request.event_id)
    assert doc["live"] == "none"


async def test_canary_regression_is_a_reject_with_the_numbers(make_world):
    world = make_world(DeployerSettings(rollout="canary", **FAST))
    _, live = await decided(world)

    await live.handle([prediction(2, "canary", latency=900.0) for _ in range(120)])

    assert decisions(world)[-1] == ("reject", None)
    rejected = world.publisher.of(ModelEvaluated)[-1]
    assert rejected.reasons[0].startswith("live_latency_p99 failed: live latency p99 900.00 ms")
    assert rejected.live_metrics["latency_p99_ms"] == 900.0
    assert world.decisions.docs[("churn", 2)]["live"] == "none"


async def test_shadow_agreement_and_labels_are_joined(make_world):
    world = make_world(DeployerSettings(rollout="shadow", min_labels=50, min_agreement=0.9, **FAST))
    _, live = await decided(world)
    assert decisions(world) == [("shadow", 0.0)]
    served = [prediction(1, label=1) for _ in range(200)]
    shadows = [
        prediction(2, "shadow", label=1 if i < 150 else 0, shadow_of=p.prediction_id)
        for i, p in enumerate(served)
    ]
    labels = [
        LabelObserved(producer="up", model_name="churn", prediction_id=p.prediction_id, label=1)
        for p in served[:60]
    ]

    await live.handle(shadows[:100] + served)  # half the shadows arrive before their champion
    await live.handle(labels)
    await live.handle(shadows[100:])

    rejected = world.publisher.of(ModelEvaluated)[-1]
    assert rejected.decision == "reject"
    assert rejected.live_metrics["agreement"] == 0.75
    assert rejected.live_metrics["compared"] == 200
    assert rejected.live_metrics["labelled"] == 60
    assert "shadow_agreement failed" in rejected.reasons[0]


def scoring_failed(version, served_by="shadow", error="ValueError: shadow blew up"):
    return ScoringFailed(
        producer="scorer",
        model_name="churn",
        request_id=uuid.uuid4().hex,
        error=error,
        version=version,
        served_by=served_by,
    )


async def test_a_shadow_that_raises_is_rejected_with_its_error_rate(make_world):
    world = make_world(DeployerSettings(rollout="shadow", **FAST))
    _, live = await decided(world)
    served = [prediction(1) for _ in range(150)]
    shadows = [prediction(2, "shadow", shadow_of=p.prediction_id) for p in served[:95]]
    unrelated = [
        scoring_failed(None, served_by=None, error="missing features: x2"),  # a bad request
        scoring_failed(1, served_by="champion"),
        scoring_failed(3),  # not the version under shadow
    ]

    assert await live.handle(served + shadows + unrelated * 10) == {"churn": "wait"}
    assert await live.handle([scoring_failed(2) for _ in range(5)]) == {"churn": "reject"}

    rejected = world.publisher.of(ModelEvaluated)[-1]
    assert rejected.decision == "reject"
    [gate] = [g for g in rejected.gates if g.name == "shadow_error_rate"]
    assert (gate.passed, gate.observed, gate.threshold) == (False, 0.05, 0.01)
    assert "shadow v2 raised on 5 of 100 requests" in rejected.reasons[0]
    assert "ValueError: shadow blew up" in rejected.reasons[0]
    assert (rejected.live_metrics["shadow_errors"], rejected.live_metrics["compared"]) == (5, 95)
    assert world.decisions.docs[("churn", 2)]["live"] == "none"


async def test_a_shadow_that_never_answers_is_rejected(make_world):
    world = make_world(DeployerSettings(rollout="shadow", **FAST, max_shadow_error_rate=1.0))
    _, live = await decided(world)

    assert await live.handle([scoring_failed(2) for _ in range(199)]) == {"churn": "wait"}
    assert await live.handle([scoring_failed(2)]) == {"churn": "reject"}

    rejected = world.publisher.of(ModelEvaluated)[-1]
    assert "never answered once in 200 attempts" in rejected.reasons[0]


async def test_shadow_errors_do_not_count_in_a_canary(make_world):
    world = make_world(DeployerSettings(rollout="canary", **FAST))
    _, live = await decided(world)

    assert await live.handle([scoring_failed(2) for _ in range(300)]) == {}
    assert decisions(world) == [("canary", 0.1)]


async def test_a_load_failure_of_the_new_champion_requests_a_rollback(make_world):
    world = make_world(DeployerSettings(**FAST))
    _, live = await decided(world)
    assert decisions(world) == [("promote", None)]
    failed = ModelLoadFailed(
        producer="scorer", model_name="churn", version=2, instance="s1", error="integrity"
    )

    await live.handle([failed])
    await live.handle([failed])

    [request] = world.publisher.of(ModelRollbackRequested)
    assert "could not load v2: s1: integrity" in request.reason


async def test_watch_passes_after_the_window_without_a_rollback(make_world):
    world = make_world(DeployerSettings(**FAST))
    _, live = await decided(world)

    assert await live.handle([prediction(2) for _ in range(300)]) == {"churn": "watch_passed"}

    assert world.publisher.of(ModelRollbackRequested) == []
    assert world.decisions.docs[("churn", 2)]["watch"]["status"] == "passed"


async def test_a_champion_no_scorer_can_load_after_its_watch_is_rolled_back_once(make_world):
    world = make_world(DeployerSettings(**FAST))
    _, live = await decided(world)
    assert await live.handle([prediction(2) for _ in range(300)]) == {"churn": "watch_passed"}
    stale = ModelLoadFailed(
        producer="scorer", model_name="churn", version=1, instance="s1", error="integrity"
    )
    await live.handle([stale])  # v1 was never promoted by this deployer: nothing to do
    assert world.publisher.of(ModelRollbackRequested) == []

    failed = [
        ModelLoadFailed(
            producer="scorer",
            model_name="churn",
            version=2,
            instance=f"s{i}",
            error="untrusted artifact: unsigned artifact",
        )
        for i in (1, 2)
    ]
    await live.handle(failed)
    await live.handle(failed)  # redelivered, and a second scorer: still one request

    [request] = world.publisher.of(ModelRollbackRequested)
    assert (request.from_version, request.to_version) == (2, 1)
    assert "cannot be loaded by s1: untrusted artifact" in request.reason
    doc = world.decisions.docs[("churn", 2)]
    assert doc["unloadable"]["instance"] == "s1"
    assert doc["history"][-1]["what"] == "rollback_requested"


async def test_two_replicas_decide_a_step_once(make_world):
    world = make_world(DeployerSettings(rollout="canary", **FAST))
    _, first = await decided(world)
    second = live_for(world, world.service())
    assert (await second.active("churn")).stage_no == 0  # both see step 0 when the race starts
    batch = [prediction(2, "canary") for _ in range(200)]

    outcomes = [await first.handle(batch), await second.handle(batch)]

    assert sorted(o["churn"] for o in outcomes) == ["canary", "lost_race"]
    steps = world.publisher.of(ModelEvaluated)[1:]
    assert len({e.event_id for e in steps}) == 1  # a racing copy carries the same event id
    assert world.decisions.docs[("churn", 2)]["stage"] == 1


def app_for(service) -> ServiceApp:
    return service_app(router, context=Deployer(service, None))


async def test_human_approval_over_http(make_world):
    world = make_world(DeployerSettings(require_approval=True, rollout="canary"))
    service, _ = await decided(world)
    assert decisions(world) == [("pending_approval", None)]
    body = {"actor": "alice", "reason": "reviewed the hold-out numbers"}
    transport = httpx.ASGITransport(app_for(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        approved = await client.post("/decisions/churn/2/approve", json=body)
        again = await client.post("/decisions/churn/2/reject", json=body)
        missing = await client.post("/decisions/churn/9/approve", json=body)
        anonymous = await client.post("/decisions/churn/2/approve", json={"reason": "x"})

    assert approved.status_code == 200, approved.text
    assert approved.json()["decision"] == "canary"
    assert approved.json()["history"][-1]["what"] == "canary"
    assert again.status_code == 409 and "not pending approval" in again.json()["error"]
    assert again.json()["reason"] == "not_pending"
    assert missing.status_code == 404
    assert anonymous.status_code == 422
    final = world.publisher.of(ModelEvaluated)[-1]
    assert (final.decision, final.actor) == ("canary", "alice")
    assert final.reasons[0] == "approved by alice: reviewed the hold-out numbers"


async def test_human_reject(make_world):
    world = make_world(DeployerSettings(require_approval=True))
    service, _ = await decided(world)

    doc = await service.reject("churn", 2, "bob", "not this week")

    assert doc["decision"] == "reject" and doc["published"] is True
    assert world.publisher.of(ModelEvaluated)[-1].decision == "reject"
    with pytest.raises(DecisionConflict):
        await service.approve("churn", 2, "bob", "changed my mind")


async def test_a_human_decision_stored_while_the_broker_is_down_is_published_later(
    make_world, flaky_publisher
):
    world = make_world(DeployerSettings(require_approval=True))
    service, _ = await decided(world)
    flaky = flaky_publisher(failures=1)
    service.events = world.relay(flaky)

    doc = await service.approve("churn", 2, "alice", "ok")  # answers at once
    assert (doc["decision"], doc["published"]) == ("promote", False)
    with pytest.raises(DecisionConflict):  # recorded: a second approval is a conflict
        await service.approve("churn", 2, "alice", "ok")
    await service.events.drain()

    assert (await service.get_decision("churn", 2))["published"] is True
    [final] = flaky.of(ModelEvaluated)
    assert (final.decision, final.actor) == ("promote", "alice")


async def test_with_auth_on_an_approval_names_the_caller_not_the_body(make_world):
    world = make_world(DeployerSettings(require_approval=True, rollout="canary"))
    service, _ = await decided(world)
    keys = ApiKeys(MemoryKeyStore())
    _, viewer = await keys.create("dashboard", "viewer")
    _, operator = await keys.create("bob", "operator")
    app = app_for(service)
    app.add_middleware(
        AuthMiddleware, service_app=app, authenticator=Authenticator(keys), open_paths=()
    )
    body = {"actor": "alice", "reason": "reviewed"}
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        nobody = await client.post("/decisions/churn/2/approve", json=body)
        looker = await client.post(
            "/decisions/churn/2/approve", json=body, headers={"X-API-Key": viewer}
        )
        approved = await client.post(
            "/decisions/churn/2/approve", json=body, headers={"X-API-Key": operator}
        )

    assert (nobody.status_code, looker.status_code, approved.status_code) == (401, 403, 200)
    final = world.publisher.of(ModelEvaluated)[-1]
    assert (final.decision, final.actor) == ("canary", "bob")
    assert final.reasons[0] == "approved by bob: reviewed"
