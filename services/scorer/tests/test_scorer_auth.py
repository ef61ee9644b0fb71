"""The scorer built by the kit with ``MODELBUS_AUTH=on``: the hot inference routes (answered by
the data plane on raw bytes) go through the same auth layer as every other route, with API keys
and with JWTs signed here."""

from __future__ import annotations

import json
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm

from modelbus_platform.auth import MemoryKeyStore
from modelbus_platform.stores import LocalObjectStore
from modelbus_platform.testing import FakeRegistry
from modelbus_scorer.bootstrap import build_app
from modelbus_scorer.config import ScorerSettings

AUDIENCE = "modelbus"
INFER = "/v2/models/m/infer"
BODY = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [0, 0]}]}
SIGNER = Ed25519PrivateKey.generate()


def token(role: str, *, ttl: float = 300, aud: str = AUDIENCE, key=SIGNER) -> str:
    now = int(time.time())
    claims = {"sub": "app-7", "aud": aud, "iat": now, "exp": now + ttl, "modelbus_role": role}
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": "k1"})


@pytest.fixture
async def scorer(tmp_path):
    public = OKPAlgorithm.to_jwk(SIGNER.public_key(), as_dict=True)
    settings = ScorerSettings(
        kafka_bootstrap="127.0.0.1:1",
        auth="on",
        jwks=json.dumps({"keys": [{**public, "kid": "k1"}]}),
        jwt_audience=AUDIENCE,
    )
    app = build_app(
        settings,
        registry=FakeRegistry(),
        store=LocalObjectStore(tmp_path),
        key_store=MemoryKeyStore(),
    )
    app.state.context = object()  # past the starting gate; the hot routes are wired already
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://scorer") as client:
        yield client, app.state.kit.api_keys()


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_the_infer_route_needs_the_predict_role(scorer):
    client, keys = scorer
    _, viewer = await keys.create("dashboard", "viewer")
    _, predict = await keys.create("app", "predict")
    missing = await client.post(INFER, json=BODY)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    denied = await client.post(INFER, json=BODY, headers=bearer(viewer))
    assert denied.status_code == 403
    assert denied.json()["error"] == "dashboard (viewer) needs the predict role"
    served = await client.post(INFER, json=BODY, headers={"X-API-Key": predict})
    assert served.json()["reason"] == "not_synced"  # the handler answered: auth let it in
    assert (await client.get("/v2", headers=bearer(viewer))).status_code == 200
    assert (await client.get("/v2/health/live")).status_code == 200


async def test_jwts_on_the_infer_route(scorer):
    client, _ = scorer
    served = await client.post(INFER, json=BODY, headers=bearer(token("predict")))
    assert served.json()["reason"] == "not_synced"
    assert (await client.post(INFER, json=BODY, headers=bearer(token("viewer")))).status_code == 403
    for bad in (
        token("predict", ttl=-60),
        token("predict", aud="another-api"),
        token("predict", key=Ed25519PrivateKey.generate()),
    ):
        answer = await client.post(INFER, json=BODY, headers=bearer(bad))
        assert answer.status_code == 401 and answer.json()["reason"] == "unauthenticated"
