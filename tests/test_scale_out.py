"""Scale-out: two scorer processes (``python -m modelbus_scorer``) in the shared consumer group
``scorer`` on a real broker (3 partitions per topic), fed by a fake registry over HTTP.

The Kafka key of a ScoringRequested is its model name, so the requests use several models whose
names hash onto every partition. Checks: both instances score part of the stream (their
/metrics counters: the events carry no instance id), both serve HTTP behind a round-robin, and
after one instance is SIGKILLed mid-stream every request still gets its PredictionMade
(at-least-once: duplicates are allowed and reported, losses are not).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from modelbus_contracts import (
    ArtifactRef,
    DatasetRef,
    Lineage,
    PredictionMade,
    ScoringFailed,
    ScoringRequested,
    encode,
)
from modelbus_contracts.api import VersionView
from modelbus_embedded import testing
from modelbus_embedded.servers import free_port, wait_for_port
from modelbus_ml import LogisticModel
from modelbus_platform.stores import S3ObjectStore, sha256_hex

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

FEATURES = ("a", "b")
PARTITIONS = 3
MODELS_PER_PARTITION = 2
ZERO = "0" * 64


def model_names(prefix: str) -> list[str]:
    """Names that cover every partition (the default partitioner: murmur2 of the key)."""
    return testing.model_names(prefix, MODELS_PER_PARTITION, PARTITIONS)


def view_for(name: str, data: bytes) -> dict[str, Any]:
    digest = sha256_hex(data)
    ref = DatasetRef(uri=f"datasets/{name}/{ZERO}.csv", sha256=ZERO, rows=10)
    return VersionView(
        model_name=name,
        version=1,
        run_id="run-1",
        artifact=ArtifactRef(
            uri=f"artifacts/{name}/{digest}.json", sha256=digest, size_bytes=len(data)
        ),
        feature_names=list(FEATURES),
        lineage=Lineage(dataset=ref, holdout=ref, seed=0, code_version="test", trigger="manual"),
        status="champion",
        created_at=datetime.now(UTC),
    ).model_dump(mode="json")


class RegistryServer:
    """The two registry reads the scorer makes, over real HTTP, from a thread."""

    def __init__(self, champions: dict[str, dict[str, Any]]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/")
                if parts == ["models"]:
                    status, body = 200, [{"name": n} for n in champions]
                elif len(parts) == 4 and parts[2:] == ["aliases", "champion"]:
                    view = champions.get(parts[1])
                    status, body = (
                        (200, view) if view else (404, {"error": "not set", "reason": "not_found"})
                    )
                else:
                    status, body = 404, {"error": "not found", "reason": "not_found"}
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def stream_predictions(port: int) -> float:
    """This instance's ``modelbus_scorer_predictions_total{source="stream"}``, summed."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("modelbus_scorer_predictions_total{") and 'source="stream"' in line
    )


def http_predictions(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("modelbus_scorer_predictions_total{") and 'source="http"' in line
    )


class Outputs:
    """Every PredictionMade / ScoringFailed of our models, counted per request id."""

    def __init__(self, bootstrap: str, models: set[str]) -> None:
        self.models = {m.encode() for m in models}
        self.made: dict[str, int] = {}
        self.failed: list[str] = []
        self.consumer = AIOKafkaConsumer(
            PredictionMade.topic,
            ScoringFailed.topic,
            bootstrap_servers=bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
        )
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.consumer.start()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for m in self.consumer:
            if m.key not in self.models:
                continue
            body = json.loads(m.value)
            if m.topic == PredictionMade.topic and body.get("source") == "stream":
                rid = body["request_id"]
                self.made[rid] = self.made.get(rid, 0) + 1
            elif m.topic == ScoringFailed.topic:
                self.failed.append(body["request_id"])

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
        await self.consumer.stop()


def start_scorer(env: dict[str, str], instance: str, port: int, log_dir: Any) -> subprocess.Popen:
    full = {
        **os.environ,
        **env,
        "MODELBUS_INSTANCE_ID": instance,
        "MODELBUS_HTTP_PORT": str(port),
        "MODELBUS_LOG_LEVEL": "WARNING",
        "MODELBUS_LOG_JSON": "true",
    }
    with (log_dir / f"{instance}.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelbus_scorer"],
            env=full,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    wait_for_port(port, 60, proc)
    return proc


async def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.2)


def models_ready(port: int, models: list[str]) -> bool:
    try:
        return all(
            httpx.get(f"http://127.0.0.1:{port}/v2/models/{m}/ready", timeout=2).status_code == 200
            for m in models
        )
    except httpx.HTTPError:
        return False


async def test_two_scorers_share_the_stream_and_survive_a_kill(
    infra, service_env, unique, tmp_path
):
    models = model_names(f"scale-{unique}")
    store = S3ObjectStore(
        infra.s3_endpoint, "modelbus", "modelbus-secret", service_env["MODELBUS_BUCKET"]
    )
    champions: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(models):
        data = LogisticModel(
            FEATURES, np.asarray([1.0, 0.5 * i]), 0.0, np.zeros(2), np.ones(2)
        ).to_bytes()
        champions[name] = view_for(name, data)
        await store.put(champions[name]["artifact"]["uri"], data)
    registry = RegistryServer(champions)
    env = {**service_env, "MODELBUS_REGISTRY_URL": registry.url}
    ports = [free_port(), free_port()]
    procs = [start_scorer(env, f"scale-{unique}-{i}", p, tmp_path) for i, p in enumerate(ports)]
    outputs = Outputs(infra.kafka_bootstrap, set(models))
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap)
    sent: list[str] = []

    async def publish(count: int) -> None:
        for _ in range(count):
            name = models[len(sent) % len(models)]
            rid = f"{unique}-{len(sent)}"
            event = ScoringRequested(
                producer="test", model_name=name, request_id=rid, features={"a": 1.0, "b": 2.0}
            )
            record = encode(event)
            headers = [(k, v.encode()) for k, v in record.headers.items()]
            await producer.send(record.topic, record.value, key=record.key, headers=headers)
            sent.append(rid)
        await producer.flush()

    try:
        await outputs.start()
        await producer.start()
        for port in ports:
            await wait_until(lambda p=port: models_ready(p, models), 60, "models loaded")

        # HTTP behind a trivial round-robin: alternate requests between the two ports
        before = [await asyncio.to_thread(http_predictions, p) for p in ports]
        async with httpx.AsyncClient(timeout=5) as client:
            for i in range(20):
                port, name = ports[i % 2], models[i % len(models)]
                body = {
                    "id": f"rr-{i}",
                    "inputs": [
                        {"name": "a", "shape": [1], "datatype": "FP64", "data": [1.0]},
                        {"name": "b", "shape": [1], "datatype": "FP64", "data": [2.0]},
                    ],
                }
                response = await client.post(
                    f"http://127.0.0.1:{port}/v2/models/{name}/infer", json=body
                )
                assert response.status_code == 200, response.text
                assert response.json()["id"] == f"rr-{i}"
        after = [await asyncio.to_thread(http_predictions, p) for p in ports]
        assert [a - b for a, b in zip(after, before, strict=True)] == [10.0, 10.0]

        # the stream splits across both instances (keep publishing until both have scored:
        # the second member's join rebalances the group)
        deadline = time.monotonic() + 40
        while True:
            await publish(30)
            counts = [await asyncio.to_thread(stream_predictions, p) for p in ports]
            if all(c > 0 for c in counts):
                break
            assert time.monotonic() < deadline, f"only one instance scored: {counts}"
            await asyncio.sleep(0.3)

        # SIGKILL one instance mid-stream; publishing goes on
        for step in range(20):
            await publish(20)
            if step == 8:
                killed_counts = [await asyncio.to_thread(stream_predictions, p) for p in ports]
                procs[1].kill()
                procs[1].wait(5)
            await asyncio.sleep(0.1)

        async def all_answered() -> bool:
            return all(rid in outputs.made for rid in sent)

        killed_at = time.monotonic()
        deadline = killed_at + 60
        while not await all_answered():
            missing = [rid for rid in sent if rid not in outputs.made]
            assert time.monotonic() < deadline, f"{len(missing)} of {len(sent)} requests lost"
            await asyncio.sleep(0.3)
        recovered_s = time.monotonic() - killed_at
        duplicates = sum(n - 1 for rid, n in outputs.made.items() if rid in set(sent))
        survivor = await asyncio.to_thread(stream_predictions, ports[0])
        print(
            f"\nscale-out: {len(sent)} requests, per-instance stream counts before the kill "
            f"{killed_counts}, survivor total {survivor}, duplicates after the kill {duplicates}, "
            f"all answered {recovered_s:.1f} s after the last publish"
        )
        assert not outputs.failed, outputs.failed[:5]
        assert set(sent) <= set(outputs.made)
        assert survivor > killed_counts[0]  # the survivor took over the dead one's partitions
        assert models_ready(ports[0], models)  # and still serves HTTP
    finally:
        await producer.stop()
        await outputs.stop()
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        registry.stop()
