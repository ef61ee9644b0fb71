"""Authentication and roles (``modelbus_platform.auth``) without any server: the role each kind
of route needs, API keys (made, found through the cache, expired, revoked, rotated, the
bootstrap key) and JWTs signed here with keys made here."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm
from starlette.requests import Request

from modelbus_platform.auth import (
    ApiKeys,
    Authenticator,
    Identity,
    JwtVerifier,
    MemoryKeyStore,
    MongoKeyStore,
    Unauthenticated,
    audit_actor,
    build_authenticator,
    hash_key,
    highest_role,
    main,
    required_role,
)
from modelbus_platform.http import ApiError
from modelbus_platform.settings import ServiceSettings
from modelbus_platform.stores import connect_mongo

OPEN = ("/health/live", "/metrics")


@pytest.mark.parametrize(
    ("method", "path", "role"),
    [
        ("GET", "/health/live", None),
        ("GET", "/metrics", None),
        ("GET", "/models/{name}", "viewer"),
        ("HEAD", "/models/{name}", "viewer"),
        ("POST", "/models/{name}/predict", "predict"),
        ("POST", "/v2/models/{name}/infer", "predict"),
        ("POST", "/v2/models/{name}/versions/{version}/infer", "predict"),
        ("POST", "/models/{name}/train", "operator"),
        ("PUT", "/models/{name}/aliases/{alias}", "operator"),
        ("PUT", "/models/{name}/policy", "admin"),
        ("GET", "/admin/keys", "admin"),
        ("DELETE", "/admin/keys/{key_id}", "admin"),
    ],
)
def test_the_role_follows_the_route(method, path, role):
    assert required_role(method, path, OPEN) == role


def test_roles_include_the_ones_before_them():
    operator = Identity("ops", "operator", "api_key")
    assert operator.may("viewer") and operator.may("predict") and operator.may("operator")
    assert not operator.may("admin")
    assert not Identity("app", "predict", "api_key").may("operator")
    assert highest_role(["viewer", "operator", "unknown"]) == "operator"
    assert highest_role("admin") == "admin"
    assert highest_role(["root"]) is None and highest_role(7) is None


class Clock:
    def __init__(self) -> None:
        self.mono = 0.0
        self.wall = datetime(2026, 1, 1, tzinfo=UTC)

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keys(clock) -> ApiKeys:
    return ApiKeys(MemoryKeyStore(), ttl_s=5.0, clock=lambda: clock.mono, now=lambda: clock.wall)


async def test_a_key_is_stored_only_as_its_hash_and_identifies_its_holder(keys):
    record, secret = await keys.create("ci", "operator")
    stored = keys.store.records[record["_id"]]  # type: ignore[attr-defined]
    assert secret.startswith("mbk_") and len(secret) > 40
    assert stored["sha256"] == hash_key(secret)
    assert secret not in json.dumps(stored, default=str)
    identity = await keys.identify(secret)
    assert identity == Identity("ci", "operator", "api_key", record["_id"])
    with pytest.raises(Unauthenticated, match="unknown"):
        await keys.identify(secret + "x")


async def test_lookups_are_cached_for_the_ttl_and_a_revocation_shows_within_it(keys, clock):
    record, secret = await keys.create("app", "predict")
    for _ in range(50):
        await keys.identify(secret)
    assert keys.store.reads == 1  # type: ignore[attr-defined]
    # revoked by another replica (straight in the store): still trusted until the TTL ends
    await keys.store.revoke(record["_id"], clock.wall)
    assert (await keys.identify(secret)).name == "app"
    clock.advance(5.0)
    with pytest.raises(Unauthenticated, match="revoked"):
        await keys.identify(secret)


async def test_the_hot_path_knows_only_what_the_cache_vouches_for(keys, clock):
    _, secret = await keys.create("app", "predict", expires_in_days=1)
    assert keys.known(secret) is None  # never read: the slow path reads it
    await keys.identify(secret)
    assert keys.known(secret).name == "app"
    assert keys.known(secret + "x") is None
    clock.advance(5.0)
    assert keys.known(secret) is None  # the TTL is over: read again
    await keys.identify(secret)
    clock.advance(86400)
    assert keys.known(secret) is None  # expired in the meantime
    with pytest.raises(Unauthenticated, match="expired"):
        await keys.identify(secret)


async def test_revoking_here_takes_effect_at_once(keys):
    record, secret = await keys.create("app", "predict")
    await keys.identify(secret)
    await keys.revoke(record["_id"])
    with pytest.raises(Unauthenticated, match="revoked"):
        await keys.identify(secret)


async def test_an_expired_key_is_refused(keys, clock):
    _, secret = await keys.create("temp", "viewer", expires_in_days=1)
    assert (await keys.identify(secret)).role == "viewer"
    clock.advance(86400)
    with pytest.raises(Unauthenticated, match="expired"):
        await keys.identify(secret)


async def test_rotation_gives_a_new_secret_and_revokes_the_old(keys, clock):
    old, old_secret = await keys.create("ci", "operator", expires_in_days=10)
    clock.advance(86400)
    new, new_secret = await keys.rotate(old["_id"])
    assert (new["name"], new["role"]) == ("ci", "operator")
    assert new["expires_at"] == old["expires_at"]  # the old key's lifetime, not a fresh one
    assert new_secret != old_secret
    assert (await keys.identify(new_secret)).key_id == new["_id"]
    with pytest.raises(Unauthenticated, match="revoked"):
        await keys.identify(old_secret)
    assert await keys.rotate("nope") is None


async def test_the_bootstrap_key_is_an_admin(clock):
    keys = ApiKeys(MemoryKeyStore(), bootstrap_sha256=hash_key("first-admin").upper())
    assert (await keys.identify("first-admin")).role == "admin"
    with pytest.raises(Unauthenticated):
        await keys.identify("second-admin")


async def test_an_unreadable_key_store_is_503_not_500():
    class Down(MemoryKeyStore):
        async def by_hash(self, sha256):
            raise ConnectionError("mongo down")

    with pytest.raises(ApiError) as caught:
        await ApiKeys(Down()).identify("mbk_x")
    assert (caught.value.status_code, caught.value.reason) == (503, "unavailable")


# -- JWT ----------------------------------------------------------------------------------------

ISSUER, AUDIENCE = "https://idp.test", "modelbus"


def jwk(private: Ed25519PrivateKey, kid: str) -> dict:
    key = OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return {**key, "kid": kid, "alg": "EdDSA", "use": "sig"}


@pytest.fixture(scope="module")
def signer() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def token(private, kid="k1", ttl=300.0, **claims) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + ttl}
    body.update({"modelbus_role": "operator", **claims})
    return jwt.encode(body, private, algorithm="EdDSA", headers={"kid": kid})


@pytest.fixture
def verifier(signer) -> JwtVerifier:
    return JwtVerifier(jwks={"keys": [jwk(signer, "k1")]}, issuer=ISSUER, audience=AUDIENCE)


async def test_a_good_token_names_its_subject_and_role(verifier, signer):
    assert await verifier.verify(token(signer)) == Identity("alice", "operator", "jwt")
    roles = JwtVerifier(jwks={"keys": [jwk(signer, "k1")]}, audience=AUDIENCE, role_claim="roles")
    assert (await roles.verify(token(signer, roles=["viewer", "admin"]))).role == "admin"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ttl": -60}, "expired"),
        ({"aud": "someone-else"}, "(?i)audience"),
        ({"iss": "https://evil.test"}, "(?i)issuer"),
        ({"kid": "k2"}, "unknown key"),
    ],
)
async def test_bad_tokens_are_unauthenticated(verifier, signer, change, message):
    with pytest.raises(Unauthenticated, match=message):
        await verifier.verify(token(signer, **change))


async def test_a_verified_token_is_remembered_until_its_expiry(signer):
    now = [time.time()]
    verifier = JwtVerifier(
        jwks={"keys": [jwk(signer, "k1")]}, audience=AUDIENCE, wall=lambda: now[0]
    )
    good = token(signer, ttl=300)
    await verifier.verify(good)
    verifier.keys.clear()  # from here on only the memory can vouch for it
    assert (await verifier.verify(good)).name == "alice"
    now[0] += 301
    with pytest.raises(Unauthenticated, match="unknown key"):
        await verifier.verify(good)


async def test_a_token_signed_by_another_key_is_refused(verifier):
    with pytest.raises(Unauthenticated, match="invalid token"):
        await verifier.verify(token(Ed25519PrivateKey.generate()))


async def test_a_token_without_a_role_is_forbidden(verifier, signer):
    with pytest.raises(ApiError) as caught:
        await verifier.verify(token(signer, modelbus_role="root"))
    assert (caught.value.status_code, caught.value.reason) == (403, "forbidden")


async def test_keys_come_from_the_jwks_url_and_a_new_kid_refetches_it(signer):
    published = {"keys": [jwk(signer, "k1")]}
    fetches = []

    def handle(request: httpx.Request) -> httpx.Response:
        fetches.append(request.url.path)
        return httpx.Response(200, json=published)

    verifier = JwtVerifier(
        jwks_url="https://idp.test/jwks",
        audience=AUDIENCE,
        refresh_s=0,
        transport=httpx.MockTransport(handle),
    )
    assert (await verifier.verify(token(signer))).name == "alice"
    rotated = Ed25519PrivateKey.generate()
    published["keys"].append(jwk(rotated, "k2"))
    assert (await verifier.verify(token(rotated, kid="k2"))).name == "alice"
    assert fetches == ["/jwks", "/jwks"]


# -- credentials from headers -------------------------------------------------------------------


async def test_credentials_come_from_bearer_or_x_api_key(keys, verifier, signer):
    _, secret = await keys.create("ci", "viewer")
    auth = Authenticator(keys, verifier)
    assert (await auth.identify([(b"x-api-key", secret.encode())])).name == "ci"
    bearer = [(b"authorization", f"Bearer {secret}".encode())]
    assert (await auth.identify(bearer)).name == "ci"
    jwt_bearer = [(b"authorization", f"bearer {token(signer)}".encode())]
    assert (await auth.identify(jwt_bearer)).kind == "jwt"
    for headers in ([], [(b"authorization", b"Basic abc")], [(b"authorization", b"Bearer ")]):
        with pytest.raises(Unauthenticated, match="credentials required"):
            await auth.identify(headers)
    with pytest.raises(Unauthenticated, match="not configured"):
        await Authenticator(keys).identify(jwt_bearer)


# -- the KeyStore port: one suite, the fake and MongoDB ----------------------------------------


@pytest.fixture(params=["memory", pytest.param("mongo", marks=pytest.mark.integration)])
async def key_store(request, unique):
    if request.param == "memory":
        yield MemoryKeyStore()
        return
    infra = request.getfixturevalue("infra")
    client, db = connect_mongo(ServiceSettings(mongo_uri=infra.mongo_uri, mongo_db=f"k_{unique}"))
    store = MongoKeyStore(db)
    await store.init()
    yield store
    await client.close()


async def test_the_key_store_finds_by_hash_lists_and_revokes_once(key_store, clock):
    keys = ApiKeys(key_store, now=lambda: clock.wall)
    first, secret = await keys.create("a", "viewer", expires_in_days=2)
    clock.advance(1)
    second, _ = await keys.create("b", "admin")
    found = await key_store.by_hash(hash_key(secret))
    assert found["_id"] == first["_id"] and found["role"] == "viewer"
    assert await key_store.by_hash(hash_key("other")) is None
    assert [r["name"] for r in await key_store.all()] == ["a", "b"]
    revoked = await key_store.revoke(second["_id"], clock.wall)
    clock.advance(1)
    again = await key_store.revoke(second["_id"], clock.wall)
    assert revoked["revoked"] and again["revoked_at"] == revoked["revoked_at"]
    assert await key_store.revoke("nope", clock.wall) is None
    assert (await key_store.get(first["_id"]))["revoked"] is False


def test_the_audit_actor_is_the_identity_when_there_is_one():
    scope = {"type": "http", "headers": []}
    assert audit_actor(Request(scope), "claimed") == "claimed"  # auth off: as before
    scope["state"] = {"identity": Identity("ops", "operator", "api_key")}
    assert audit_actor(Request(scope), "mallory") == "ops"


async def test_the_bootstrap_key_command_prints_a_key_and_its_hash(capsys):
    assert main(["bootstrap-key"]) == 0
    key_line, hash_line = capsys.readouterr().out.splitlines()
    secret = key_line.rsplit(" ", 1)[1]
    assert hash_line == f"MODELBUS_ADMIN_KEY_SHA256={hash_key(secret)}"
    keys = ApiKeys(MemoryKeyStore(), bootstrap_sha256=hash_line.split("=", 1)[1])
    assert (await keys.identify(secret)).role == "admin"
    assert main([]) == 2


async def test_static_keys_from_the_settings_identify_without_the_store(capsys):
    class Down(MemoryKeyStore):
        async def by_hash(self, sha256):
            raise AssertionError("a static key is never looked up in MongoDB")

    assert main(["static-key", "scorer", "viewer"]) == 0
    key_line, entry_line = capsys.readouterr().out.splitlines()
    secret = key_line.rsplit(" ", 1)[1]
    entry = json.loads(entry_line.split(": ", 1)[1])
    assert entry == {"name": "scorer", "role": "viewer", "sha256": hash_key(secret)}
    settings = ServiceSettings(auth="on", static_keys=json.dumps([entry]))
    keys = build_authenticator(settings, Down()).keys
    identity = await keys.identify(secret)
    assert (identity.name, identity.role, identity.kind) == ("scorer", "viewer", "static")
    assert keys.known(secret) == identity  # the hot path knows it without a coroutine
    assert main(["static-key", "x", "root"]) == 2  # not a role


@pytest.mark.parametrize(
    "raw",
    [
        "{}",
        '[{"name": "a", "role": "god", "sha256": "' + "0" * 64 + '"}]',
        '[{"name": "a", "role": "viewer", "sha256": "short"}]',
        '[{"name": "a\\u0000", "role": "viewer", "sha256": "' + "0" * 64 + '"}]',
        '[{"name": "a", "role": "viewer", "sha256": "' + "0" * 64 + '", "extra": 1}]',
    ],
)
def test_a_malformed_static_key_list_stops_the_service(raw):
    settings = ServiceSettings(auth="on", static_keys=raw)
    with pytest.raises(ValueError):
        build_authenticator(settings, MemoryKeyStore())
