"""Unit tests of the deployer's HTTP API on fakes (no servers): decisions and policy views."""

from __future__ import annotations

import httpx

from modelbus_deployer.api import router
from modelbus_deployer.bootstrap import build_app
from modelbus_deployer.config import DeployerSettings, ModelPolicy
from modelbus_deployer.handlers import Deployer
from modelbus_embedded.testing import service_app
from modelbus_platform.http import ServiceApp


def app_for(service) -> ServiceApp:
    return service_app(router, context=Deployer(service, None))


async def test_decisions_newest_first_single_and_404(world):
    service = world.service()
    await service.handle_registered(await world.registered(world.models.good, version=1))
    await service.handle_registered(
        await world.registered(world.models.bad, version=2, champion=(world.models.good, 1))
    )
    transport = httpx.ASGITransport(app_for(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        listed = await client.get("/decisions", params={"model_name": "churn"})
        limited = await client.get("/decisions", params={"limit": 1})
        other = await client.get("/decisions", params={"model_name": "other"})
        one = await client.get("/decisions/churn/2")
        missing = await client.get("/decisions/churn/9")
        bad_limit = await client.get("/decisions", params={"limit": 0})
        bad_name = await client.get("/decisions", params={"model_name": "../x"})

    assert listed.status_code == 200
    assert [(d["version"], d["decision"]) for d in listed.json()] == [(2, "reject"), (1, "promote")]
    assert [d["version"] for d in limited.json()] == [2]
    assert other.json() == []
    body = one.json()
    assert body["champion_version"] == 1
    assert body["champion_metrics"]["auc"] > 0.9
    assert {g["name"] for g in body["gates"]} >= {"champion_delta", "latency_budget"}
    assert body["published"] is True
    assert body["timings"]["total_ms"] >= 0
    assert missing.status_code == 404
    assert missing.json() == {"error": "no decision for churn v9", "reason": "unknown_decision"}
    assert bad_limit.status_code == 422
    assert bad_name.status_code == 422


async def test_policy_view(make_world):
    settings = DeployerSettings(policies={"fraud": ModelPolicy(primary_metric="brier")})
    service = make_world(settings).service()
    transport = httpx.ASGITransport(app_for(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/policy")
        named = await client.get("/policy", params={"model_name": "churn"})

    body = response.json()
    assert body["default"]["primary_metric"] is None  # the task's default
    assert body["default"]["metric_by_task"] == {
        "binary": "log_loss",
        "multiclass": "log_loss",
        "regression": "rmse",
    }
    assert body["default"]["latency_budget_ms"] == 5.0
    assert body["models"]["fraud"]["primary_metric"] == "brier"
    assert body["models"]["fraud"]["higher_is_better"] is False
    assert body["models"]["fraud"]["metric_by_task"]["regression"] == "brier"  # would reject
    assert named.json()["models"]["churn"]["promotion_margin"] == 0.0
    assert named.json()["models"]["churn"]["significance"] == 0.05


async def test_built_app_connects_nothing_until_its_lifespan_runs():
    app = build_app(
        DeployerSettings(kafka_bootstrap="127.0.0.1:1", mongo_uri="mongodb://127.0.0.1:1")
    )
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        live = await client.get("/health/live")
        ready = await client.get("/health/ready")
        metrics = await client.get("/metrics")

    assert live.status_code == 200
    assert ready.status_code == 503
    assert ready.json()["checks"] == {
        "bus": False,
        "dependencies": False,
        "consumers": False,
        "mongo": False,
        "object_store": False,
    }
    assert "modelbus_deployer_decisions_total" in metrics.text


async def test_a_version_out_of_range_in_the_path_is_422_naming_it(world):
    service = world.service()
    await service.handle_registered(await world.registered(world.models.good, version=1))
    human = {"actor": "ann", "reason": "looks fine"}
    transport = httpx.ASGITransport(app_for(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for version in (2**53 + 1, 2**63, 2**64, 0):
            answers = [
                await client.get(f"/decisions/churn/{version}"),
                await client.post(f"/decisions/churn/{version}/approve", json=human),
                await client.post(f"/decisions/churn/{version}/reject", json=human),
            ]
            for answer in answers:
                assert answer.status_code == 422, (version, answer.text)
                assert answer.json()["reason"] == "validation_error"
                assert answer.json()["details"][0]["loc"] == ["path", "version"]
        assert (await client.get("/decisions/churn/1")).status_code == 200
