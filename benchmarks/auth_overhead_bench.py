"""What authentication costs the infer route, in process: ``POST /v2/models/{name}/infer``
through the scorer's whole HTTP chain (metrics, errors, body limit, auth, data plane, the hot
handler, the prediction log), called as an ASGI app with no server and no network, auth off vs
an API key vs a JWT (both as the caches hold them after the first request). Rounds are
interleaved; the medians go to build/bench/auth_overhead.json.

No server means the chain is all there is, so the ratio is a floor: over HTTP the same
microseconds are a smaller share of each request. The issue's figure (online throughput with
and without auth, side by side) belongs in ``online_bench.py``; this bench isolates the layer.
Run: ``uv run python benchmarks/auth_overhead_bench.py``.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness as h
import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm

from modelbus_embedded.testing import put_version
from modelbus_platform.auth import (
    ApiKeys,
    Authenticator,
    AuthMiddleware,
    JwtVerifier,
    MemoryKeyStore,
)
from modelbus_platform.http import ServiceApp, create_app
from modelbus_platform.stores import LocalObjectStore
from modelbus_platform.testing import FakeRegistry, RecordingPublisher
from modelbus_scorer.api import Scoring, build_router, install_hot_routes
from modelbus_scorer.domain import ModelHolder
from modelbus_scorer.prediction_log import PredictionLog
from modelbus_scorer.service import ScorerService
from modelbus_scorer.telemetry import ScorerMetrics

PATH = "/v2/models/m/infer"
BODY = orjson.dumps(
    {
        "inputs": [
            {"name": "age", "shape": [1], "datatype": "FP64", "data": [1.0]},
            {"name": "income", "shape": [1], "datatype": "FP64", "data": [2.0]},
        ]
    }
)
ROUNDS, REQUESTS = 7, 5000


async def scorer_app(folder: Path, authenticator: Authenticator | None) -> ServiceApp:
    store, registry, publisher = LocalObjectStore(folder), FakeRegistry(), RecordingPublisher()
    metrics = ScorerMetrics("bench")
    service = ScorerService(
        holder=ModelHolder(),
        registry=registry,
        store=store,
        publisher=publisher,
        metrics=metrics,
        prediction_log=PredictionLog(publisher, metrics, producer="scorer", capacity=10**7),
        producer="scorer",
        instance="bench",
        max_instances=50,
    )
    registry.put(await put_version(store, "m", 1), champion=True)
    await service.sync_all()

    async def ready() -> dict[str, bool]:
        return {}

    app = create_app(title="bench", description="bench", metrics=metrics, readiness=ready)
    app.include_router(build_router(service, ready))
    install_hot_routes(app, Scoring(service))
    if authenticator is not None:  # as the kit adds it
        app.add_middleware(
            AuthMiddleware, service_app=app, authenticator=authenticator, open_paths=()
        )
    return app


async def requests_per_second(app: ServiceApp, headers: list[tuple[bytes, bytes]], n: int):
    scope = {
        "type": "http",
        "method": "POST",
        "path": PATH,
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), *headers],
    }
    statuses: set[int] = set()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.add(message["status"])

    started = time.perf_counter()
    for _ in range(n):
        await app(dict(scope), receive, send)
    elapsed = time.perf_counter() - started
    if statuses != {200}:
        raise SystemExit(f"the bench's requests were answered {statuses}")
    return n / elapsed


async def main() -> None:
    keys = ApiKeys(MemoryKeyStore())
    _, secret = await keys.create("bench", "predict")
    signer = Ed25519PrivateKey.generate()
    jwks = {"keys": [{**OKPAlgorithm.to_jwk(signer.public_key(), as_dict=True), "kid": "k"}]}
    claims = {"sub": "bench", "exp": int(time.time()) + 3600, "modelbus_role": "predict"}
    token = jwt.encode(claims, signer, algorithm="EdDSA", headers={"kid": "k"})
    authenticator = Authenticator(keys, JwtVerifier(jwks=jwks))
    with tempfile.TemporaryDirectory() as folder:
        targets = {
            "auth off": (await scorer_app(Path(folder), None), []),
            "API key": (
                await scorer_app(Path(folder), authenticator),
                [(b"x-api-key", secret.encode())],
            ),
            "JWT": (
                await scorer_app(Path(folder), authenticator),
                [(b"authorization", f"Bearer {token}".encode())],
            ),
        }
        for app, headers in targets.values():  # warm-up: the caches hold the credentials
            await requests_per_second(app, headers, 1000)
        rounds: dict[str, list[float]] = {name: [] for name in targets}
        for _ in range(ROUNDS):
            for name, (app, headers) in targets.items():
                rounds[name].append(await requests_per_second(app, headers, REQUESTS))
    medians = {name: statistics.median(values) for name, values in rounds.items()}
    base = medians["auth off"]
    result = {
        "requests_per_second": medians,
        "vs_auth_off": {name: value / base for name, value in medians.items()},
        "microseconds_added": {name: 1e6 / v - 1e6 / base for name, v in medians.items()},
        "rounds": rounds,
        "settings": {"rounds": ROUNDS, "requests": REQUESTS, "python": sys.version.split()[0]},
    }
    path = h.write_json("auth_overhead.json", result)
    for name, value in medians.items():
        print(
            f"{name:9} {value:8.0f} req/s  {value / base:5.3f}x  "
            f"+{result['microseconds_added'][name]:.1f} us"
        )
    print(f"-> {path}")


if __name__ == "__main__":
    asyncio.run(main())
