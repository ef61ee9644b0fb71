"""The HTTP API over the service on fakes: status codes, reasons, response shapes."""

from __future__ import annotations

import httpx
import pytest

from modelbus_contracts import ModelPolicyChanged, ModelPromoted
from modelbus_contracts.api import AliasesView, AuditRecord, ModelView, VersionView
from modelbus_embedded.testing import service_app
from modelbus_registry.api import build_router

MODEL = "fraud"


@pytest.fixture
async def client(wired):
    app = service_app(build_router(audit_limit=50), context=wired.service)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry") as http:
        yield http


async def register(wired, mk, seed=0):
    ref = await mk.put_artifact(wired.store, MODEL, seed=seed)
    return await wired.service.register(mk.trained(MODEL, ref))


async def test_models_versions_and_artifact(client, wired, mk):
    await register(wired, mk)
    models = [ModelView.model_validate(m) for m in (await client.get("/models")).json()]
    assert [(m.name, m.latest_version) for m in models] == [(MODEL, 1)]
    model = ModelView.model_validate((await client.get(f"/models/{MODEL}")).json())
    assert model.aliases.champion is None
    versions = (await client.get(f"/models/{MODEL}/versions")).json()
    assert [VersionView.model_validate(v).version for v in versions] == [1]
    one = VersionView.model_validate((await client.get(f"/models/{MODEL}/versions/1")).json())
    assert one.feature_names == mk.features
    artifact = await client.get(f"/models/{MODEL}/versions/1/artifact")
    assert artifact.status_code == 200
    assert artifact.content == mk.artifact_bytes()


@pytest.mark.parametrize(
    "path",
    ["/models/nope", "/models/nope/versions", "/models/nope/versions/1", "/models/nope/aliases"],
)
async def test_unknown_models_are_404_with_a_reason(client, path):
    response = await client.get(path)
    assert response.status_code == 404
    assert response.json()["reason"] == "not_found"
    assert "nope" in response.json()["error"]


async def test_unset_alias_and_unknown_version_are_404(client, wired, mk):
    await register(wired, mk)
    unset = await client.get(f"/models/{MODEL}/aliases/champion")
    assert unset.status_code == 404
    assert unset.json() == {"error": "alias champion of fraud is not set", "reason": "not_found"}
    assert (await client.get(f"/models/{MODEL}/versions/9/artifact")).status_code == 404
    assert (await client.get(f"/models/{MODEL}/aliases/king")).status_code == 422


async def test_tampered_artifact_is_409(client, wired, mk):
    registered = await register(wired, mk)
    await wired.store.put(registered.artifact.uri, b"{}")
    response = await client.get(f"/models/{MODEL}/versions/1/artifact")
    assert response.status_code == 409
    assert response.json()["reason"] == "artifact_integrity_failed"
    assert "does not match" in response.json()["error"]


async def test_put_alias_cas_and_conflict(client, wired, mk):
    await register(wired, mk)
    await register(wired, mk, seed=1)
    body = {"version": 1, "expected_version": None, "reason": "first"}
    ok = await client.put(f"/models/{MODEL}/aliases/champion", json=body, headers={"X-Actor": "bo"})
    assert ok.status_code == 200
    assert AliasesView.model_validate(ok.json()).champion == 1
    stale = {"version": 2, "expected_version": None, "reason": "late"}
    conflict = await client.put(f"/models/{MODEL}/aliases/champion", json=stale)
    assert conflict.status_code == 409
    assert conflict.json()["reason"] == "promotion_conflict"
    assert "champion is at version 1" in conflict.json()["error"]
    target = await client.get(f"/models/{MODEL}/aliases/champion")
    assert VersionView.model_validate(target.json()).version == 1
    assert [e.reason for e in wired.published.of(ModelPromoted)] == ["first"]
    bad = await client.put(f"/models/{MODEL}/aliases/champion", json={"version": 0})
    assert bad.status_code == 422


async def test_rollback_and_audit(client, wired, mk):
    await register(wired, mk)
    await register(wired, mk, seed=1)
    await wired.service.record_evaluation(mk.evaluated(MODEL, 1, None))
    no_previous = await client.post(f"/models/{MODEL}/rollback", json={"reason": "x"})
    assert no_previous.status_code == 409
    assert no_previous.json()["reason"] == "rollback_refused"
    await wired.service.record_evaluation(mk.evaluated(MODEL, 2, 1))
    done = await client.post(f"/models/{MODEL}/rollback", json={"reason": "bad canary"})
    assert done.status_code == 200
    assert AliasesView.model_validate(done.json()).champion == 1
    rows = [
        AuditRecord.model_validate(r) for r in (await client.get(f"/models/{MODEL}/audit")).json()
    ]
    assert rows[0].action == "rolled_back"
    assert rows[0].reason == "bad canary"
    assert rows[0].at >= rows[-1].at
    limited = (await client.get("/audit", params={"model_name": MODEL, "limit": 2})).json()
    assert [r["action"] for r in limited] == ["rolled_back", rows[1].action]
    assert (await client.get("/audit", params={"limit": 0})).status_code == 422
    assert len((await client.get("/audit", params={"limit": 5000})).json()) <= 50


async def test_service_unavailable_before_startup(client, wired):
    client._transport.app.state.context = None
    response = await client.get("/models")
    assert response.status_code == 503
    assert response.json() == {"error": "registry is starting", "reason": "starting"}


async def test_a_policy_is_versioned_compare_and_set_audited_and_announced(client, wired):
    empty = (await client.get(f"/models/{MODEL}/policy")).json()
    assert (empty["revision"], empty["policy"]["training"]["family"]) == (0, None)
    body = {
        "policy": {
            "training": {"family": "sklearn", "params": {"estimator": "random_forest"}},
            "promotion": {"rollout": "shadow", "significance": 0.01},
            "monitoring": {"detectors": {"*": "kswin"}, "recovery_tolerance": 0.02},
        },
        "expected_revision": 0,
        "reason": "forests, shadowed",
    }
    first = await client.put(f"/models/{MODEL}/policy", json=body, headers={"X-Actor": "alice"})
    assert first.status_code == 200, first.text
    assert (first.json()["revision"], first.json()["updated_by"]) == (1, "alice")
    stale = await client.put(f"/models/{MODEL}/policy", json=body)
    assert stale.status_code == 409 and stale.json()["reason"] == "policy_conflict"
    assert "revision 1, not 0" in stale.json()["error"]
    second = await client.put(
        f"/models/{MODEL}/policy",
        json={**body, "expected_revision": 1, "policy": {"promotion": {"rollout": "canary"}}},
    )
    assert second.status_code == 200 and second.json()["revision"] == 2
    current = (await client.get(f"/models/{MODEL}/policy")).json()
    assert current["policy"]["promotion"]["rollout"] == "canary"
    assert current["policy"]["training"]["family"] is None  # a PUT replaces the whole policy
    revisions = (await client.get(f"/models/{MODEL}/policy/revisions")).json()
    assert [r["revision"] for r in revisions] == [2, 1]
    changed = wired.published.of(ModelPolicyChanged)
    assert [(e.revision, e.actor) for e in changed] == [(1, "alice"), (2, "registry-api")]
    audit = (await client.get(f"/models/{MODEL}/audit")).json()
    policy_records = [r for r in audit if r["action"] == "policy_changed"]
    assert [r["details"]["revision"] for r in policy_records] == [2, 1]
    assert policy_records[1]["details"]["policy"]["training"]["family"] == "sklearn"


@pytest.mark.parametrize(
    "policy, where",
    [
        ({"promotion": {"rollout": "sideways"}}, "rollout"),
        ({"monitoring": {"recovery_min_points": 5}}, "recovery_min_points"),
        ({"monitoring": {"detectors": {"x": "magic"}}}, "detectors"),
        ({"training": {"family": "auto", "epochs": 3}}, "epochs"),
        ({"surprise": {}}, "surprise"),
    ],
)
async def test_a_bad_policy_is_refused_with_the_field(client, wired, policy, where):
    body = {"policy": policy, "expected_revision": 0, "reason": "r"}
    response = await client.put(f"/models/{MODEL}/policy", json=body)
    assert response.status_code == 422 and response.json()["reason"] == "validation_error"
    assert where in response.text
    assert wired.published.of(ModelPolicyChanged) == []


async def test_every_models_policy_is_listed_and_a_bad_schedule_is_refused(client, wired):
    for name in ("b-model", "a-model"):
        body = {"policy": {"training": {"family": "logreg"}}, "expected_revision": 0, "reason": "r"}
        assert (await client.put(f"/models/{name}/policy", json=body)).status_code == 200
    schedule = {"schedule": {"cron": "61 * * * *"}}
    bad = await client.put(
        "/models/a-model/policy",
        json={"policy": {"training": schedule}, "expected_revision": 1, "reason": "r"},
    )
    assert bad.status_code == 422 and bad.json()["reason"] == "bad_policy"
    assert "not a cron expression" in bad.json()["error"]
    listed = (await client.get("/policies")).json()
    assert [(p["model_name"], p["revision"]) for p in listed] == [("a-model", 1), ("b-model", 1)]


HUGE = [str(2**53 + 1), str(2**63), str(2**64), "0", "-1"]


@pytest.mark.parametrize("version", HUGE)
@pytest.mark.parametrize("suffix", ["", "/artifact"])
async def test_a_version_out_of_range_in_the_path_is_422_naming_it(
    client, wired, mk, version, suffix
):
    await register(wired, mk)
    response = await client.get(f"/models/{MODEL}/versions/{version}{suffix}")
    assert response.status_code == 422
    assert response.json()["reason"] == "validation_error"
    assert response.json()["details"][0]["loc"] == ["path", "version"]


@pytest.mark.parametrize("field", ["version", "expected_version"])
@pytest.mark.parametrize("value", [2**53 + 1, 2**63, 2**64])
async def test_an_alias_put_with_a_version_out_of_range_is_422_naming_the_field(
    client, wired, mk, field, value
):
    await register(wired, mk)
    body = {"version": 1, "expected_version": None, "reason": "r", field: value}
    response = await client.put(f"/models/{MODEL}/aliases/champion", json=body)
    assert response.status_code == 422
    assert response.json()["reason"] == "validation_error"
    assert response.json()["details"][0]["loc"] == ["body", field]
    assert AliasesView.model_validate((await client.get(f"/models/{MODEL}/aliases")).json()) == (
        AliasesView(model_name=MODEL)
    )


@pytest.mark.parametrize("actor", ["", "   ", "bo\x00b", "a\tb", "x" * 201])
async def test_an_audit_actor_must_name_someone(client, wired, mk, actor):
    """Auth off: the X-Actor header names who moved a champion; an empty, blank or
    control-character name is refused before anything moves (auth on: the identity names it)."""
    await register(wired, mk)
    body = {"version": 1, "expected_version": None, "reason": "first"}
    response = await client.put(
        f"/models/{MODEL}/aliases/champion", json=body, headers={"X-Actor": actor}
    )
    assert response.status_code == 422
    assert response.json()["details"][0]["loc"][-1] == "X-Actor"
    assert (await client.get(f"/models/{MODEL}/aliases")).json()["champion"] is None
