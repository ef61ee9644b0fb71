"""Test helpers shared by the suites: publish events as an upstream system would, watch what
services publish on the broker, hand the bus records shaped like the ones aiokafka gives it,
run a service's routes in the platform's HTTP shell (failing any answer whose status its route
does not document), and tiny models with their artifacts and registry records (or the
ModelTrained a trainer would publish for one)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.partitioner import murmur2
from fastapi import APIRouter

from modelbus_contracts import (
    ArtifactRef,
    DatasetRef,
    Event,
    Lineage,
    ModelTrained,
    decode,
    encode,
)
from modelbus_contracts.api import VersionView
from modelbus_ml import Dataset, LogisticModel, train_logreg
from modelbus_platform.artifacts import ArtifactTrust
from modelbus_platform.http import ServiceApp, create_app
from modelbus_platform.metrics import Metrics
from modelbus_platform.signing import Signer
from modelbus_platform.stores import ObjectStore, sha256_hex


async def until(check, timeout: float = 60.0):
    """``await check()`` until it answers something truthy (then that), or fail."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"{check.__name__}: not within {timeout}s")


def partition_of(key: str, partitions: int = 3) -> int:
    """The partition the default partitioner (murmur2 of the key) puts ``key`` on."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def model_names(prefix: str, per_partition: int = 1, partitions: int = 3) -> list[str]:
    """Model names (Kafka keys) that cover every partition, ``per_partition`` on each."""
    by_partition: dict[int, list[str]] = {p: [] for p in range(partitions)}
    i = 0
    while any(len(v) < per_partition for v in by_partition.values()):
        name = f"{prefix}-{i}"
        bucket = by_partition[partition_of(name, partitions)]
        if len(bucket) < per_partition:
            bucket.append(name)
        i += 1
    return [n for names in by_partition.values() for n in names]


async def publish(bootstrap: str, *events: Event, signer: Signer | None = None) -> None:
    """Publish ``events`` (CloudEvents binary mode) with a plain aiokafka producer, in order;
    control events signed by ``signer`` if one is given (as that service would sign them)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for event in events:
            record = encode(event)
            raw = record.headers
            if signer is not None:
                raw = signer.sign(record.topic, raw, record.value)
            headers = [(k, v.encode()) for k, v in raw.items()]
            await producer.send_and_wait(
                record.topic, record.value, key=record.key, headers=headers
            )
    finally:
        await producer.stop()


async def collect(bootstrap: str, topic: str, key: str, seconds: float) -> list[Any]:
    """The raw records keyed ``key`` on ``topic`` (from the beginning, an own group) that
    arrive within ``seconds``: headers and all (a dead letter's reason is in them)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=f"collect-{uuid.uuid4().hex}",
    )
    await consumer.start()
    found = []
    try:
        deadline = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            found += [r for rs in batch.values() for r in rs if r.key == key.encode()]
    finally:
        await consumer.stop()
    return found


@dataclass
class ConsumedRecord:
    """The shape of an aiokafka ``ConsumerRecord``, as the bus reads it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, Any]]


class EventTap:
    """A raw consumer (own group, from the beginning) keeping one model's events, decoded."""

    def __init__(self, bootstrap: str, model: str, topics: Iterable[str]) -> None:
        self.model = model.encode()
        self.events: list[Event] = []
        self.consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=bootstrap,
            group_id=f"tap-{uuid.uuid4().hex}",
            auto_offset_reset="earliest",
        )
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.consumer.start()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for message in self.consumer:
            if message.key == self.model:
                self.events.append(decode(message.headers, message.value))

    async def wait_for(self, predicate: Callable[[Event], bool], timeout: float = 30.0) -> Event:
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
        await self.consumer.stop()


class DocumentedStatuses:
    """A middleware for API tests: once a request is answered, fail it (the ASGI app raises, so
    the test client does) if its route's OpenAPI operation does not document the status."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        statuses: list[int] = []

        async def watch(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])
            await send(message)

        await self.app(scope, receive, watch)
        route, method = scope.get("route"), scope["method"].lower()
        operation = scope["app"].openapi()["paths"].get(getattr(route, "path_format", None), {})
        if (
            statuses
            and method in operation
            and str(statuses[0]) not in operation[method]["responses"]
        ):
            raise AssertionError(
                f"{scope['method']} {route.path_format} answered {statuses[0]}, "
                f"which its OpenAPI operation does not document"
            )


def service_app(*routers: APIRouter, max_body_bytes: int = 1_000_000, **state: Any) -> ServiceApp:
    """A service's routers in the platform's app (the chain, the error body), ``state`` set on
    ``app.state``, every answer checked against the OpenAPI document (``DocumentedStatuses``)."""

    async def ready() -> dict[str, bool]:
        return {}

    app = create_app(
        title="test",
        description="test",
        metrics=Metrics("test"),
        readiness=ready,
        max_body_bytes=max_body_bytes,
    )
    for router in routers:
        app.include_router(router)
    for name, value in state.items():
        setattr(app.state, name, value)
    app.add_middleware(DocumentedStatuses)
    return app


# -- tiny models, their artifacts and registry records ------------------------------------------

ZERO_SHA = "0" * 64
FEATURES = ("age", "income")


def tiny_model(
    names: tuple[str, ...] = FEATURES, coef: list[float] | None = None, intercept: float = 0.0
) -> LogisticModel:
    """A logistic model over ``names`` with no scaling (coefficients 1 unless given)."""
    k = len(names)
    return LogisticModel(
        feature_names=names,
        coef=np.asarray(coef if coef is not None else [1.0] * k, dtype=np.float64),
        intercept=intercept,
        mean=np.zeros(k),
        scale=np.ones(k),
        threshold=0.5,
    )


def version_view(
    name: str,
    version: int,
    data: bytes,
    names: tuple[str, ...] = FEATURES,
    sha: str | None = None,
) -> VersionView:
    """The registry's record of ``version`` whose artifact is ``data`` (``sha``: a record that
    claims another hash, for integrity tests)."""
    digest = sha or sha256_hex(data)
    ref = DatasetRef(uri=f"datasets/{name}/{ZERO_SHA}.csv", sha256=ZERO_SHA, rows=10)
    return VersionView(
        model_name=name,
        version=version,
        run_id=f"run-{version}",
        artifact=ArtifactRef(
            uri=f"artifacts/{name}/{digest}.json", sha256=digest, size_bytes=len(data)
        ),
        feature_names=list(names),
        lineage=Lineage(dataset=ref, holdout=ref, seed=0, code_version="test", trigger="manual"),
        status="champion",
        created_at=datetime.now(UTC),
    )


async def put_version(
    store: ObjectStore,
    name: str,
    version: int,
    model: LogisticModel | None = None,
    *,
    data: bytes | None = None,
    sha: str | None = None,
) -> VersionView:
    """Put ``model``'s artifact (or ``data``) in ``store``; the registry record pointing at it."""
    model = model or tiny_model()
    payload = data if data is not None else model.to_bytes()
    view = version_view(name, version, payload, model.feature_names, sha=sha)
    await store.put(view.artifact.uri, payload)
    return view


def labelled(
    rows: int, seed: int, flip: bool = False, features: tuple[str, ...] = ("x1", "x2")
) -> Dataset:
    """A linearly separable-ish binary dataset (``flip``: its labels inverted)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, len(features)))
    y = ((2.0 * X[:, 0] - X[:, 1] + 0.3 * rng.normal(size=rows)) > 0).astype(np.int8)
    return Dataset(tuple(features), X, 1 - y if flip else y)


async def trained_event(
    store: ObjectStore,
    model_name: str,
    seed: int,
    flip: bool = False,
    features: tuple[str, ...] = ("x1", "x2"),
    signer: Signer | None = None,
) -> ModelTrained:
    """A ModelTrained whose artifact and hold-out are really in ``store`` (``flip``: a model
    trained on inverted labels, judged on true ones: a bad model); its artifact signed by
    ``signer`` as the trainer signs what it trains (publish the event with the same signer)."""
    model = train_logreg(labelled(400, seed, flip, features), {"epochs": 100}, seed=0)
    artifact = model.to_bytes()
    digest = sha256_hex(artifact)
    await store.put(f"artifacts/{model_name}/{digest}.json", artifact, "application/octet-stream")
    holdout = labelled(200, seed + 100, features=features).to_csv_bytes()
    hkey = f"datasets/{model_name}/{sha256_hex(holdout)}.csv"
    await store.put(hkey, holdout, "application/octet-stream")
    ref = DatasetRef(uri=hkey, sha256=sha256_hex(holdout), rows=200)
    return ModelTrained(
        producer="trainer",
        model_name=model_name,
        run_id=uuid.uuid4().hex,
        artifact=ArtifactTrust(signer).sign(
            ArtifactRef(
                uri=f"artifacts/{model_name}/{digest}.json",
                sha256=digest,
                size_bytes=len(artifact),
            )
        ),
        feature_names=list(features),
        metrics={},
        lineage=Lineage(dataset=ref, holdout=ref, seed=0, code_version="it", trigger="api"),
        training_seconds=0.01,
    )
