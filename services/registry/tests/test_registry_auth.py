"""The registry built by the kit with ``MODELBUS_AUTH=on`` (API keys in memory, the service on
fakes): 401 / 403 / 2xx through the real chain, the key admin API (bootstrap admin, make, list,
revoke, rotate) and the audit actor taken from the identity, not from ``X-Actor``."""

from __future__ import annotations

import httpx
import pytest

from modelbus_platform.auth import MemoryKeyStore, hash_key
from modelbus_registry.bootstrap import build_app
from modelbus_registry.config import RegistrySettings

MODEL = "fraud"
BOOTSTRAP = "mbk_bootstrap-made-by-the-operator"


@pytest.fixture
async def http(wired):
    settings = RegistrySettings(
        kafka_bootstrap="127.0.0.1:1",
        mongo_uri="mongodb://127.0.0.1:1",
        auth="on",
        admin_key_sha256=hash_key(BOOTSTRAP),
    )
    app = build_app(settings, key_store=MemoryKeyStore())
    app.state.context = wired.service  # as the lifespan does once started
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
        yield client


def as_(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def make_key(http, role: str, name: str | None = None, **extra) -> dict:
    body = {"name": name or f"{role}-key", "role": role, **extra}
    answer = await http.post("/admin/keys", json=body, headers={"X-API-Key": BOOTSTRAP})
    assert answer.status_code == 201, answer.text
    return answer.json()


async def test_without_or_with_bad_credentials_is_401_with_a_challenge(http):
    for headers in ({}, as_("mbk_not-a-key"), {"X-API-Key": "nope"}):
        answer = await http.get("/models", headers=headers)
        assert answer.status_code == 401
        assert answer.json()["reason"] == "unauthenticated"
        assert answer.headers["www-authenticate"] == "Bearer"
    assert (await http.get("/no/such/route")).status_code == 401


async def test_health_and_metrics_stay_open(http):
    assert (await http.get("/health/live")).status_code == 200
    assert (await http.get("/metrics")).status_code == 200


async def test_each_role_reaches_what_it_may_and_is_403_beyond(http, wired, mk):
    await wired.service.register(mk.trained(MODEL, await mk.put_artifact(wired.store, MODEL)))
    viewer = (await make_key(http, "viewer"))["key"]
    operator = (await make_key(http, "operator", name="ops"))["key"]
    assert (await http.get("/models", headers=as_(viewer))).status_code == 200
    assert (await http.get("/no/such/route", headers=as_(viewer))).status_code == 404

    move = {"version": 1, "expected_version": None, "reason": "first champion"}
    denied = await http.put(f"/models/{MODEL}/aliases/champion", json=move, headers=as_(viewer))
    assert denied.status_code == 403
    assert denied.json() == {
        "error": "viewer-key (viewer) needs the operator role",
        "reason": "forbidden",
    }
    moved = await http.put(
        f"/models/{MODEL}/aliases/champion",
        json=move,
        headers={**as_(operator), "X-Actor": "mallory"},
    )
    assert moved.status_code == 200, moved.text
    audit = (await http.get(f"/models/{MODEL}/audit", headers=as_(viewer))).json()
    assert audit[0]["action"] == "alias_set" and audit[0]["actor"] == "ops"

    policy = await http.put(f"/models/{MODEL}/policy", json={}, headers=as_(operator))
    assert policy.status_code == 403 and "admin" in policy.json()["error"]
    assert (await http.get("/admin/keys", headers=as_(operator))).status_code == 403


async def test_dead_letters_are_for_admins_only(http):
    operator = as_((await make_key(http, "operator", name="ops"))["key"])
    body = {"partition": 0, "from_offset": 0, "to_offset": 0, "dry_run": True}
    for answer in (
        await http.get("/admin/dlq", headers=operator),
        await http.get("/admin/dlq/label.observed.v1.dlq", headers=operator),
        await http.post("/admin/dlq/label.observed.v1.dlq/replay", json=body, headers=operator),
    ):
        assert answer.status_code == 403 and "needs the admin role" in answer.json()["error"]
    admin = {"X-API-Key": BOOTSTRAP}  # reaches the tool: no broker here, an unknown topic
    answer = await http.get("/admin/dlq", headers=admin)
    assert (answer.status_code, answer.json()["reason"]) == (503, "broker_unavailable")
    answer = await http.get("/admin/dlq/payments.v1", headers=admin)
    assert (answer.status_code, answer.json()["reason"]) == (404, "unknown_topic")


async def test_keys_are_listed_without_secrets_revoked_and_rotated(http):
    viewer = await make_key(http, "viewer")
    ops = await make_key(http, "operator", expires_in_days=30)
    admin = {"X-API-Key": BOOTSTRAP}
    listed = await http.get("/admin/keys", headers=admin)
    assert [k["name"] for k in listed.json()] == ["viewer-key", "operator-key"]
    assert viewer["key"] not in listed.text and "sha256" not in listed.text
    assert all("key" not in k for k in listed.json())

    revoked = await http.delete(f"/admin/keys/{viewer['id']}", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    answer = await http.get("/models", headers=as_(viewer["key"]))
    assert answer.status_code == 401 and "revoked" in answer.json()["error"]

    rotated = await http.post(f"/admin/keys/{ops['id']}/rotate", headers=admin)
    assert rotated.status_code == 201
    new = rotated.json()
    assert new["id"] != ops["id"] and new["expires_at"] == ops["expires_at"]
    assert (await http.get("/models", headers=as_(ops["key"]))).status_code == 401
    assert (await http.get("/models", headers=as_(new["key"]))).status_code == 200
    again = await http.post(f"/admin/keys/{ops['id']}/rotate", headers=admin)
    assert again.status_code == 409 and again.json()["reason"] == "key_revoked"

    for missing in (
        http.delete("/admin/keys/nope", headers=admin),
        http.post("/admin/keys/nope/rotate", headers=admin),
    ):
        answer = await missing
        assert answer.status_code == 404 and answer.json()["reason"] == "not_found"


async def test_a_bad_key_request_is_422_and_an_admin_key_can_make_admins(http):
    admin = await make_key(http, "admin")
    bad = await http.post(
        "/admin/keys", json={"name": "x", "role": "root"}, headers=as_(admin["key"])
    )
    assert bad.status_code == 422 and bad.json()["reason"] == "validation_error"
    made = await http.post(
        "/admin/keys", json={"name": "second", "role": "admin"}, headers=as_(admin["key"])
    )
    assert made.status_code == 201 and made.json()["key"].startswith("mbk_")


async def test_with_auth_off_keys_are_not_managed_and_routes_stay_open(wired):
    settings = RegistrySettings(kafka_bootstrap="127.0.0.1:1", mongo_uri="mongodb://127.0.0.1:1")
    store = MemoryKeyStore()
    app = build_app(settings, key_store=store)
    app.state.context = wired.service
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
        assert (await client.get("/models")).status_code == 200
        made = await client.post("/admin/keys", json={"name": "sneaky", "role": "admin"})
        listed = await client.get("/admin/keys")
    assert made.status_code == 403 and made.json()["reason"] == "auth_off"
    assert listed.status_code == 403
    assert store.records == {}


async def test_a_service_reads_the_registry_with_a_key_of_its_own(http, wired, mk):
    """With auth on at the registry, the scorer, monitor and batch read it with their own
    viewer key (MODELBUS_REGISTRY_API_KEY); without it they are refused, never let in."""
    from modelbus_platform.registry import RegistryClient, RegistryError

    await wired.service.register(mk.trained(MODEL, await mk.put_artifact(wired.store, MODEL)))
    viewer = (await make_key(http, "viewer", name="scorer"))["key"]
    transport = http._transport  # the same app
    keyed = RegistryClient("http://registry", transport=transport, api_key=viewer)
    keyless = RegistryClient("http://registry", transport=transport)
    try:
        assert (await keyed.version(MODEL, 1)).version == 1
        with pytest.raises(RegistryError, match="401"):
            await keyless.version(MODEL, 1)
    finally:
        await keyed.close()
        await keyless.close()
