"""Safe rollouts and automatic rollback on the real servers (Kafka-protocol broker,
MongoDB-wire, S3): the registry and the deployer run in-process, talking only through the broker.

Two models each get v1 then v2 promoted (trained-event -> registered -> evaluated -> promoted).
Then the new champion regresses on live traffic:

- model A: a burst of PredictionMade answered by the fallback (``served_by="fallback"``);
- model B: a scorer reports ModelLoadFailed for v2.

Each must end in exactly one ModelRolledBack (2 -> 1) whose reason carries the deployer's
numbers, caused by the deployer's ModelRollbackRequested; more bad news afterwards changes
nothing (one rollback per promotion).

A third scenario adds the scorer (in-process, reading the registry app over ASGI): a canary
policy takes v2 through two canary steps on live HTTP traffic routed by ``X-Routing-Key``, each
step judged by the deployer from the scorer's PredictionMade, then promotes it.

A fourth puts a challenger in shadow that cannot score live traffic (it needs a feature the
requests do not carry): every request is still answered by the champion, the scorer reports
each shadow failure as ScoringFailed, and the deployer rejects v2 on its shadow error rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from modelbus_contracts import (
    Event,
    ModelEvaluated,
    ModelLoadFailed,
    ModelPromoted,
    ModelRollbackRequested,
    ModelRolledBack,
    ModelRolloutChanged,
    PredictionMade,
    decode,
    encode,
)
from modelbus_deployer.bootstrap import build_app as build_deployer
from modelbus_deployer.config import DeployerSettings, ModelPolicy
from modelbus_embedded.testing import trained_event as trained
from modelbus_platform.stores import S3ObjectStore
from modelbus_registry.bootstrap import build_app as build_registry
from modelbus_registry.config import RegistrySettings
from modelbus_scorer.bootstrap import build_app as build_scorer
from modelbus_scorer.config import ScorerSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

FEATURES = ("x1", "x2")


async def publish(producer: AIOKafkaProducer, *events: Event) -> None:
    for event in events:
        record = encode(event)
        headers = [(k, v.encode()) for k, v in record.headers.items()]
        await producer.send(record.topic, record.value, key=record.key, headers=headers)
    await producer.flush()


class Watcher:
    """Collects ModelPromoted / ModelRolledBack / ModelRollbackRequested of our models."""

    TYPES = (
        ModelPromoted,
        ModelRolledBack,
        ModelRollbackRequested,
        ModelEvaluated,
        ModelRolloutChanged,
    )

    def __init__(self, bootstrap: str, models: set[str]) -> None:
        self.consumer = AIOKafkaConsumer(
            *(cls.topic for cls in self.TYPES),
            bootstrap_servers=bootstrap,
            group_id=f"rollback-it-{uuid.uuid4().hex}",
            auto_offset_reset="earliest",
        )
        self.models = models
        self.seen: list[Event] = []
        self.changed = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.consumer.start()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        by_topic = {cls.topic: cls for cls in self.TYPES}
        async for message in self.consumer:
            if message.key is None or message.key.decode() not in self.models:
                continue
            self.seen.append(decode(message.headers, message.value, by_topic[message.topic]))
            self.changed.set()

    def of(self, cls, model_name: str) -> list:
        return [e for e in self.seen if isinstance(e, cls) and e.model_name == model_name]

    async def until(self, predicate, timeout: float = 40.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        await self.consumer.stop()


@contextlib.asynccontextmanager
async def running(*apps) -> AsyncIterator[None]:
    """Start the apps' lifespans concurrently (each waits for its consumer groups to join)."""
    contexts = [app.router.lifespan_context(app) for app in apps]
    await asyncio.gather(*(c.__aenter__() for c in contexts))
    try:
        yield
    finally:
        for context in reversed(contexts):
            await context.__aexit__(None, None, None)


def s3(service_env):
    settings = RegistrySettings()
    return S3ObjectStore(
        service_env["MODELBUS_S3_ENDPOINT"],
        settings.s3_access_key.get_secret_value(),
        settings.s3_secret_key.get_secret_value(),
        service_env["MODELBUS_BUCKET"],
    )


def serving_stack(name: str, policy: ModelPolicy, db: str):
    """Registry, deployer (with ``policy`` for ``name``) and a scorer reading the registry app
    over ASGI, each with databases of its own."""
    registry = build_registry(RegistrySettings(mongo_db=f"reg_{db}"))
    deployer = build_deployer(
        DeployerSettings(
            mongo_db=f"dep_{db}",
            # v1 (a bad model) only has to exist: judged by AUC against no minimum
            primary_metric="auc",
            min_primary_metric=0.0,
            policies={name: policy},
        )
    )
    scorer = build_scorer(
        ScorerSettings(registry_url="http://registry", instance_id=f"it-{db}"),
        registry_transport=httpx.ASGITransport(registry),
    )
    return registry, deployer, scorer


async def observing(infra, name: str) -> tuple[Watcher, AIOKafkaProducer]:
    """A started watcher of ``name``'s decisions and a started producer to feed the stack."""
    watcher = Watcher(infra.kafka_bootstrap, {name})
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap)
    await producer.start()
    await watcher.start()
    return watcher, producer


def fallback(model_name: str, version: int) -> PredictionMade:
    return PredictionMade(
        producer="scorer",
        model_name=model_name,
        prediction_id=uuid.uuid4().hex,
        version=version,
        features={"x1": 0.1, "x2": 0.2},
        score=0.4,
        label=0,
        served_by="fallback",
        latency_ms=0.5,
    )


async def test_a_regressing_champion_is_rolled_back_once(infra, service_env, unique, monkeypatch):
    for key, value in service_env.items():
        monkeypatch.setenv(key, value)
    registry = build_registry(RegistrySettings(mongo_db=f"reg_{unique}"))
    deployer = build_deployer(
        DeployerSettings(
            mongo_db=f"dep_{unique}",
            # v1 (a bad model) only has to exist (AUC, no minimum); v2 beats it
            primary_metric="auc",
            min_primary_metric=0.0,
            min_live_predictions=100,
        )
    )
    store = s3(service_env)
    a, b = f"rb-fallback-{unique}", f"rb-loadfail-{unique}"
    watcher = Watcher(infra.kafka_bootstrap, {a, b})
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap)
    await producer.start()
    await watcher.start()
    try:
        async with running(registry, deployer):
            await publish(
                producer, await trained(store, a, 1, True), await trained(store, b, 2, True)
            )
            await watcher.until(
                lambda: watcher.of(ModelPromoted, a) and watcher.of(ModelPromoted, b)
            )
            await publish(producer, await trained(store, a, 3), await trained(store, b, 4))
            await watcher.until(
                lambda: (
                    len(watcher.of(ModelPromoted, a)) == 2
                    and len(watcher.of(ModelPromoted, b)) == 2
                )
            )
            failed = ModelLoadFailed(
                producer="scorer", model_name=b, version=2, instance="scorer-x", error="integrity"
            )
            await publish(producer, *[fallback(a, 2) for _ in range(150)], failed)
            await watcher.until(
                lambda: watcher.of(ModelRolledBack, a) and watcher.of(ModelRolledBack, b)
            )
            await publish(producer, *[fallback(a, 2) for _ in range(150)], failed)  # again
            await asyncio.sleep(2.0)
    finally:
        await watcher.stop()
        await producer.stop()

    [rolled_a] = watcher.of(ModelRolledBack, a)
    [request_a] = watcher.of(ModelRollbackRequested, a)
    assert (rolled_a.from_version, rolled_a.to_version) == (2, 1)
    assert rolled_a.causation_id == request_a.event_id
    assert rolled_a.reason.startswith("fallback_rate failed: fallback rate 1.000 > maximum 0.05")
    assert request_a.evidence["fallbacks"] >= 100
    assert request_a.correlation_id == watcher.of(ModelPromoted, a)[1].correlation_id
    [rolled_b] = watcher.of(ModelRolledBack, b)
    [request_b] = watcher.of(ModelRollbackRequested, b)
    assert (rolled_b.from_version, rolled_b.to_version) == (2, 1)
    assert "could not load v2: scorer-x: integrity" in rolled_b.reason
    assert request_b.evidence["load_failures"] >= 1


async def test_a_canary_steps_through_live_traffic_then_is_promoted(
    infra, service_env, unique, monkeypatch
):
    for key, value in service_env.items():
        monkeypatch.setenv(key, value)
    name = f"canary-{unique}"
    policy = ModelPolicy(
        rollout="canary",
        canary_steps=[0.3, 0.6],
        canary_step_predictions=25,
        min_live_predictions=20,
        rollback_watch_predictions=40,
    )
    registry, deployer, scorer = serving_stack(name, policy, f"c{unique}")
    store = s3(service_env)
    watcher, producer = await observing(infra, name)
    served: list[tuple[str, int]] = []
    try:
        async with running(registry, deployer, scorer):
            transport = httpx.ASGITransport(scorer)
            client = httpx.AsyncClient(transport=transport, base_url="http://scorer")
            await publish(producer, await trained(store, name, 5, True))
            await watcher.until(lambda: watcher.of(ModelPromoted, name))
            await publish(producer, await trained(store, name, 6))
            await watcher.until(lambda: watcher.of(ModelRolloutChanged, name))
            i = 0
            while len(watcher.of(ModelPromoted, name)) < 2 and i < 3000:
                i += 1
                response = await client.post(
                    f"/models/{name}/predict",
                    json={"features": {"x1": 0.3, "x2": -0.2}},
                    headers={"X-Routing-Key": f"user-{i % 500}"},
                )
                if response.status_code == 200:
                    body = response.json()
                    served.append((body["served_by"], body["model_version"]))
                await asyncio.sleep(0.005)
            decision = await httpx.AsyncClient(
                transport=httpx.ASGITransport(deployer), base_url="http://deployer"
            ).get(f"/decisions/{name}/2")
            await client.aclose()
    finally:
        await watcher.stop()
        await producer.stop()

    steps = [
        (e.decision, e.rollout.fraction if e.rollout else None)
        for e in watcher.of(ModelEvaluated, name)
        if e.version == 2
    ]
    assert steps == [("canary", 0.3), ("canary", 0.6), ("promote", None)]
    changes = [(e.mode, e.fraction) for e in watcher.of(ModelRolloutChanged, name)]
    assert changes == [("canary", 0.3), ("canary", 0.6)]
    assert ("canary", 2) in served and ("champion", 1) in served
    assert [p.version for p in watcher.of(ModelPromoted, name)] == [1, 2]
    body = decision.json()
    assert [h["what"] for h in body["history"]] == ["canary", "canary", "promote"]
    step = watcher.of(ModelEvaluated, name)[-2]
    assert step.live_metrics["predictions"] >= 25 and step.gates[0].name == "live_sample_size"


async def test_a_shadow_that_cannot_score_is_rejected_on_its_error_rate(
    infra, service_env, unique, monkeypatch
):
    for key, value in service_env.items():
        monkeypatch.setenv(key, value)
    name = f"shadow-{unique}"
    policy = ModelPolicy(rollout="shadow", shadow_min_predictions=30, min_live_predictions=20)
    registry, deployer, scorer = serving_stack(name, policy, f"s{unique}")
    store = s3(service_env)
    watcher, producer = await observing(infra, name)
    answers: list[tuple[int, str, int]] = []
    try:
        async with running(registry, deployer, scorer):
            client = httpx.AsyncClient(
                transport=httpx.ASGITransport(scorer), base_url="http://scorer"
            )
            await publish(producer, await trained(store, name, 7, True))
            await watcher.until(lambda: watcher.of(ModelPromoted, name))
            # v2 also needs x3, which live traffic does not carry: it passes the offline gates
            # (its hold-out has x1, x2 and x3) and loads, but cannot score a live request
            await publish(producer, await trained(store, name, 8, features=("x1", "x2", "x3")))
            await watcher.until(lambda: watcher.of(ModelRolloutChanged, name))

            def rejected() -> bool:
                return any(
                    e.version == 2 and e.decision == "reject"
                    for e in watcher.of(ModelEvaluated, name)
                )

            i = 0
            while not rejected() and i < 2000:
                i += 1
                response = await client.post(
                    f"/models/{name}/predict", json={"features": {"x1": 0.3, "x2": -0.2}}
                )
                body = response.json()
                answers.append((response.status_code, body["served_by"], body["model_version"]))
                await asyncio.sleep(0.005)
            await watcher.until(rejected, timeout=20)
            await client.aclose()
    finally:
        await watcher.stop()
        await producer.stop()

    assert answers and set(answers) == {(200, "champion", 1)}  # the shadow never showed
    [verdict] = [e for e in watcher.of(ModelEvaluated, name) if e.decision == "reject"]
    gate = next(g for g in verdict.gates if g.name == "shadow_error_rate")
    assert not gate.passed and gate.observed == 1.0
    assert [p.version for p in watcher.of(ModelPromoted, name)] == [1]  # v2 never promoted
