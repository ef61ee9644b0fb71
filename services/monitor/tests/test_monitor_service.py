"""The service layer and HTTP API on fakes: registry, incident store and publisher in memory."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import httpx
import pytest

from modelbus_contracts import (
    ArtifactRef,
    Columns,
    DataQualityAlert,
    DatasetRef,
    DriftDetected,
    FeatureStats,
    IncidentUpdated,
    LabelObserved,
    Lineage,
    ModelEvaluated,
    ModelPolicyChanged,
    ModelPromoted,
    ModelRolledBack,
    PredictionMade,
    decode_batch,
    encode,
)
from modelbus_contracts.api import VersionView
from modelbus_embedded.testing import service_app
from modelbus_monitor.api import router
from modelbus_monitor.bootstrap import SPEC
from modelbus_monitor.config import DetectorConfig, MonitorSettings
from modelbus_monitor.metrics import MonitorMetrics
from modelbus_monitor.policy import Incident
from modelbus_monitor.service import MonitorService, detector_config
from modelbus_monitor.testing import MemoryIncidentStore
from modelbus_platform.kit import bind
from modelbus_platform.policies import Policies
from modelbus_platform.testing import FakeRegistry, InlineRelay, RecordingPublisher

SHA = "0" * 64
REFERENCE = {"x": FeatureStats(count=1000, mean=0.0, std=1.0, min=-4.0, max=4.0)}
ARTIFACT = ArtifactRef(uri="artifacts/m/x.json", sha256=SHA, size_bytes=1)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def version_view(name: str, version: int, reference=REFERENCE) -> VersionView:
    dataset = DatasetRef(uri="datasets/m/x.csv", sha256=SHA, rows=10)
    lineage = Lineage(dataset=dataset, holdout=dataset, seed=1, code_version="t", trigger="api")
    return VersionView(
        model_name=name,
        version=version,
        run_id="r",
        artifact=ARTIFACT,
        feature_names=list(reference),
        lineage=lineage,
        reference=reference,
        status="champion",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def register(registry: FakeRegistry, name: str, champion: int) -> None:
    registry.put(version_view(name, champion), champion=True)


async def send(service: MonitorService, *events: PredictionMade | LabelObserved) -> None:
    """Events through the service's batch entry points: one batch per run of the same type."""
    runs: list[list[PredictionMade | LabelObserved]] = []
    for event in events:
        if runs and type(runs[-1][-1]) is type(event):
            runs[-1].append(event)
        else:
            runs.append([event])
    for run in runs:
        if isinstance(run[0], PredictionMade):
            await service.on_prediction_batch(Columns[PredictionMade].of(run))
        else:
            await service.on_label_batch(Columns[LabelObserved].of(run))


class Harness:
    def __init__(self, **config) -> None:
        self.clock = Clock()
        self.registry = FakeRegistry()
        self.store = MemoryIncidentStore()
        self.publisher = RecordingPublisher()
        self.metrics = MonitorMetrics()
        self.rng = random.Random(1)
        self.service = self.build(DetectorConfig(**config))

    def build(self, config: DetectorConfig) -> MonitorService:
        self.policies = Policies(self.registry, ttl_s=3600)
        return MonitorService(
            config,
            publisher=self.publisher,
            events=InlineRelay([self.store.outbox], self.publisher),
            incidents=self.store,
            registry=self.registry,
            metrics=self.metrics,
            registry_retry_s=30,
            clock=self.clock,
            policies=self.policies,
        )

    async def stream(self, name: str, n: int, error_rate: float, version: int = 1) -> None:
        for _ in range(n):
            self.clock.now += timedelta(milliseconds=20)
            predicted = int(self.rng.random() < 0.5)
            truth = 1 - predicted if self.rng.random() < error_rate else predicted
            pid = uuid.uuid4().hex
            await send(
                self.service,
                prediction(name, pid, predicted, version),
                LabelObserved(model_name=name, prediction_id=pid, label=truth),
            )

    def metric(self, name: str, **labels) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


async def drifted() -> tuple[Harness, DriftDetected]:
    """A harness whose model churn v1 drifted (error rate 0.10 -> 0.45): one open incident."""
    h = Harness(feature_drift_enabled=False)
    register(h.registry, "churn", 1)
    await h.service.rebuild()
    await h.stream("churn", 1500, 0.1)
    await h.stream("churn", 1500, 0.45)
    [event] = h.publisher.of(DriftDetected)
    return h, event


def prediction(name: str, pid: str, label: int, version: int = 1, x: float = 0.0):
    return PredictionMade(
        model_name=name,
        prediction_id=pid,
        version=version,
        features={"x": x},
        score=0.5,
        label=label,
        latency_ms=1.0,
    )


def promoted(name: str, version: int, **kw) -> ModelPromoted:
    return ModelPromoted(
        model_name=name,
        version=version,
        previous_version=version - 1 or None,
        artifact=ARTIFACT,
        feature_names=["x"],
        reason="test",
        **kw,
    )


def test_settings_defaults_and_descriptions():
    settings = MonitorSettings()
    assert (settings.service_name, settings.http_port, settings.adwin_delta) == (
        "monitor",
        8005,
        0.002,
    )
    config = detector_config(settings)
    assert (config.error_min_observations, config.feature_min_observations) == (100, 300)
    own = set(MonitorSettings.model_fields) - {"service_name", "http_port"}
    for field in own - set(MonitorSettings.__mro__[1].model_fields):
        assert MonitorSettings.model_fields[field].description, field


async def test_drift_opens_one_incident_publishes_once_and_promotion_closes_it():
    h = Harness(feature_drift_enabled=False)
    register(h.registry, "churn", 1)
    await h.service.rebuild()
    await h.stream("churn", 1500, 0.1)
    assert h.publisher.of(DriftDetected) == []
    await h.stream("churn", 1500, 0.45)

    [event] = h.publisher.of(DriftDetected)
    assert (event.model_name, event.version, event.feature, event.producer) == (
        "churn",
        1,
        "__error__",
        "monitor",
    )
    assert str(event.correlation_id) == event.incident_id
    [stored] = await h.store.list("churn")
    assert stored.status == "open" and stored.published
    assert stored.causation_id == str(event.causation_id)
    assert h.metric("modelbus_monitor_incidents_total", model="churn", action="opened") == 1
    assert h.metric("modelbus_monitor_joined_pairs_total", model="churn") == 3000

    await h.stream("churn", 1500, 0.9)
    assert len(h.publisher.of(DriftDetected)) == 1
    suppressed = h.metric("modelbus_monitor_suppressed_alarms_total", model="churn", reason="open")
    assert suppressed >= 1
    assert (await h.store.get(event.incident_id)).suppressed_alarms == suppressed

    h.clock.now += timedelta(seconds=1)
    forged = promoted("churn", 2, correlation_id=event.correlation_id)
    await h.service.on_promoted(forged)  # the registry's champion is still v1: not acted on
    assert (await h.store.get(event.incident_id)).state == "retraining"
    assert h.service.status("churn")["serving_version"] == 1
    assert h.service.status("churn")["counts"]["claims_not_confirmed"] == 1
    register(h.registry, "churn", 2)
    cause = promoted("churn", 2, correlation_id=event.correlation_id)
    await h.service.on_promoted(cause)
    recovering = await h.store.get(event.incident_id)
    assert (recovering.status, recovering.state, recovering.live_version) == (
        "open",
        "recovering",
        2,
    )
    status = h.service.status("churn")
    assert (status["serving_version"], status["observations"]) == (2, 0)
    await h.stream("churn", 299, 0.05, version=2)
    assert (await h.store.get(event.incident_id)).status == "open", "judged on 300 points"
    await h.stream("churn", 1, 0.05, version=2)
    closed = await h.store.get(event.incident_id)
    assert (closed.status, closed.state, closed.closed_by_version) == ("closed", "recovered", 2)
    assert h.service.status("churn")["open_incident"] is None
    assert h.metric("modelbus_monitor_incidents_total", model="churn", action="closed") == 1
    # every state change went out as an IncidentUpdated, in order, with its numbers
    updates = h.publisher.of(IncidentUpdated)
    assert [(u.state, u.open) for u in updates] == [
        ("detected", True),
        ("retraining", True),
        ("recovering", True),
        ("recovered", False),
    ]
    assert all(u.correlation_id == event.correlation_id for u in updates)
    assert updates[-1].live_points == 300 and updates[-1].version == 2
    assert updates[-1].live_accuracy >= updates[-1].baseline_accuracy - 0.03


async def test_restart_restores_the_open_incident_and_keeps_suppressing():
    h = Harness(feature_drift_enabled=False)
    register(h.registry, "churn", 1)
    await h.service.rebuild()
    await h.stream("churn", 1500, 0.1)
    await h.stream("churn", 1500, 0.5)
    [event] = h.publisher.of(DriftDetected)

    h.service = h.build(DetectorConfig(feature_drift_enabled=False))  # a restart
    await h.service.rebuild()
    assert h.service.status("churn")["open_incident"]["incident_id"] == event.incident_id
    await h.stream("churn", 1500, 0.1)
    await h.stream("churn", 1500, 0.7)
    assert len(h.publisher.of(DriftDetected)) == 1


async def test_an_incident_opened_during_a_broker_outage_is_published_when_it_answers():
    h = Harness(feature_drift_enabled=False)
    register(h.registry, "churn", 1)
    await h.service.rebuild()
    real_publish = h.publisher.publish_record
    failures = []

    async def flaky(record):
        if record.topic == DriftDetected.topic and not failures:
            failures.append(record)
            raise ConnectionError("broker down")
        await real_publish(record)

    h.publisher.publish_record = flaky
    await h.stream("churn", 1500, 0.1)
    await h.stream("churn", 1500, 0.5)  # the incident opens; consuming goes on
    [stored] = await h.store.open_incidents()
    assert h.publisher.of(DriftDetected) == [] and failures
    await h.service.events.drain()  # the relay's next attempt
    [event] = h.publisher.of(DriftDetected)
    assert str(event.event_id) == stored.event["event_id"]
    assert await h.store.outbox.pending(10) == []


async def test_feature_detectors_wait_for_the_reference_and_retry_the_registry():
    h = Harness(feature_min_observations=100)
    h.registry.down = True
    await h.service.rebuild()
    await send(h.service, prediction("churn", "p0", 1))
    assert h.service.status("churn")["serving_version"] is None
    calls = len(h.registry.calls)
    await send(h.service, prediction("churn", "p1", 1))
    assert len(h.registry.calls) == calls  # rate limited
    h.registry.down = False
    register(h.registry, "churn", 1)
    h.clock.now += timedelta(seconds=31)
    await send(h.service, prediction("churn", "p2", 1))
    status = h.service.status("churn")
    assert status["serving_version"] == 1
    assert status["reference_features"] == ["x"]
    for i in range(600):
        h.clock.now += timedelta(milliseconds=10)
        x = h.rng.gauss(0.0 if i < 300 else 1.0, 1.0)
        await send(h.service, prediction("churn", f"q{i}", 1, x=x))
    [event] = h.publisher.of(DriftDetected)
    assert event.feature == "x"
    assert (
        h.metric(
            "modelbus_monitor_drift_alarms_total",
            model="churn",
            detector="adwin",
            feature="x",
            disposition="opened",
        )
        == 1
    )


async def test_rollback_closes_the_incident_too():
    h = Harness(feature_drift_enabled=False)
    register(h.registry, "churn", 2)
    await h.service.rebuild()
    await h.stream("churn", 1500, 0.1, version=2)
    await h.stream("churn", 1500, 0.5, version=2)
    [event] = h.publisher.of(DriftDetected)
    h.clock.now += timedelta(seconds=1)
    register(h.registry, "churn", 1)
    await h.service.on_rolled_back(
        ModelRolledBack(
            model_name="churn",
            from_version=2,
            to_version=1,
            artifact=ARTIFACT,
            feature_names=["x"],
            reason="regression",
        )
    )
    recovering = await h.store.get(event.incident_id)
    assert recovering.state == "recovering"
    assert recovering.transitions[-1]["reason"].startswith("v1 serves (rolled back: regression)")
    await h.stream("churn", 300, 0.05, version=1)
    closed = await h.store.get(event.incident_id)
    assert (closed.status, closed.state, closed.closed_by_version) == ("closed", "recovered", 1)


async def test_quality_alert_is_published_and_counted():
    h = Harness()
    register(h.registry, "churn", 1)
    await h.service.rebuild()
    await send(h.service, prediction("churn", "p1", 1, x=100.0))
    await send(h.service, prediction("churn", "p2", 1, x=100.0))
    [alert] = h.publisher.of(DataQualityAlert)
    assert (alert.check, alert.feature, alert.count) == ("out_of_range", "x", 1)
    assert alert.examples[0]["value"] == 100.0
    assert (
        h.metric("modelbus_monitor_quality_alerts_total", model="churn", check="out_of_range") == 1
    )


async def test_eviction_and_ignored_are_counted_in_metrics():
    h = Harness(join_max_pending=5)
    register(h.registry, "churn", 1)
    await h.service.rebuild()
    for i in range(8):
        await send(h.service, LabelObserved(model_name="churn", prediction_id=f"l{i}", label=1))
    await send(h.service, prediction("churn", "s1", 1).model_copy(update={"served_by": "shadow"}))
    assert (
        h.metric("modelbus_monitor_evicted_pending_total", model="churn", reason="label_overflow")
        == 3
    )
    assert h.metric("modelbus_monitor_ignored_total", model="churn", reason="served_by_shadow") == 1


@pytest.fixture
async def api_client():
    h = Harness(feature_drift_enabled=False)
    app = service_app(router, context=h.service)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        yield h, c


async def test_api_status_and_incidents(api_client):
    h, client = api_client
    assert (await client.get("/models/churn/status")).status_code == 404
    register(h.registry, "churn", 1)
    await h.service.rebuild()
    await h.stream("churn", 1500, 0.1)
    await h.stream("churn", 1500, 0.5)
    status = (await client.get("/models/churn/status")).json()
    assert status["serving_version"] == 1
    assert status["joined"] == 3000
    assert 0.1 < status["error_rate"] < 0.6
    assert status["detectors"]["__error__"]["observations"] == 3000
    incident_id = status["open_incident"]["incident_id"]
    assert status["open_incident"]["evidence"]["feature"] == "__error__"
    listed = (await client.get("/incidents", params={"model_name": "churn", "limit": 5})).json()
    assert [i["incident_id"] for i in listed] == [incident_id]
    one = (await client.get(f"/incidents/{incident_id}")).json()
    assert one["status"] == "open" and one["evidence"]["feature"] == "__error__"
    assert (await client.get("/incidents/nope")).status_code == 404
    assert (await client.get("/incidents", params={"limit": 0})).status_code == 422
    assert (await client.get("/incidents", params={"model_name": "other"})).json() == []


def test_incident_roundtrips_through_its_drift_event():
    event = DriftDetected(
        model_name="m",
        version=1,
        incident_id=str(uuid.uuid4()),
        detector="adwin",
        feature="__error__",
        statistic=0.4,
        window_size=10,
        observations=100,
        detected_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    incident = Incident(
        incident_id=event.incident_id,
        model_name="m",
        version=1,
        opened_at=event.detected_at,
        causation_id="c",
        evidence={},
        event=event.model_dump(mode="json"),
    )
    assert incident.drift_event() == event


class SubscriptionRecorder:
    def __init__(self) -> None:
        self.subscriptions: list[tuple[str, str]] = []
        self.handlers: dict[str, object] = {}

    def subscribe(self, event_cls, *, group: str, handler, **options) -> None:
        self.subscriptions.append((event_cls.topic, group))
        self.handlers[event_cls.topic] = handler

    def subscribe_batch(self, event_cls, *, group: str, handler, columns: bool, **options) -> None:
        """Like the bus: the records are decoded into columns by the contracts."""
        assert columns
        self.subscriptions.append((event_cls.topic, f"{group} (batch)"))

        async def decoded(events) -> None:
            raws = [_raw(encode(e), offset) for offset, e in enumerate(events)]
            payload, accepted, rejected = decode_batch(event_cls, raws)
            assert (len(accepted), rejected) == (len(events), [])
            await handler(payload)

        self.handlers[event_cls.topic] = decoded


def _raw(record, offset: int):
    headers = [(k, v.encode()) for k, v in record.headers.items()]
    return SimpleNamespace(
        topic=record.topic,
        partition=0,
        offset=offset,
        key=record.key,
        headers=headers,
        value=record.value,
    )


async def test_the_spec_subscribes_telemetry_in_batches_and_control_events_singly():
    h = Harness(feature_drift_enabled=False)
    bus = SubscriptionRecorder()
    bind(bus, SPEC, h.service, MonitorSettings())
    assert sorted(bus.subscriptions) == sorted(
        [(cls.topic, "monitor (batch)") for cls in (PredictionMade, LabelObserved)]
        + [
            (cls.topic, "monitor-control")
            for cls in (ModelPromoted, ModelRolledBack, ModelEvaluated, ModelPolicyChanged)
        ]
    )
    register(h.registry, "churn", 3)
    await bus.handlers[ModelPromoted.topic](promoted("churn", 3))
    await bus.handlers[PredictionMade.topic]([prediction("churn", "p1", 1, version=3)])
    await bus.handlers[LabelObserved.topic](
        [LabelObserved(model_name="churn", prediction_id="p1", label=0)]
    )
    status = h.service.status("churn")
    assert (status["serving_version"], status["joined"], status["observations"]) == (3, 1, 1)


def test_entrypoint_builds_an_app_without_connecting():
    from modelbus_monitor import __main__ as entry
    from modelbus_monitor.bootstrap import build_app

    assert entry.SPEC is SPEC
    app = build_app(MonitorSettings(mongo_uri="mongodb://127.0.0.1:1"))
    paths = set(app.openapi()["paths"])
    assert {"/models/{name}/status", "/incidents", "/incidents/{incident_id}"} <= paths
    assert {"/health/live", "/health/ready", "/metrics"} <= paths


async def test_the_live_monitoring_policy_applies_without_a_restart():
    h, event = await drifted()
    revision = h.registry.set_policy(
        "churn",
        {"monitoring": {"recovery_min_points": 100, "detectors": {"__error__": "ddm"}}},
    ).revision
    await h.service.on_policy_changed(
        ModelPolicyChanged(model_name="churn", revision=revision, actor="alice")
    )
    monitor = h.service.models["churn"]
    assert (monitor.policy_revision, monitor.policy.rules.min_points) == (1, 100)
    assert h.service.status("churn")["detectors"]["__error__"]["detector"] == "adwin", (
        "the running streams keep their detectors"
    )
    register(h.registry, "churn", 2)
    await h.service.on_promoted(promoted("churn", 2, correlation_id=event.correlation_id))
    assert h.service.status("churn")["detectors"]["__error__"]["detector"] == "ddm"
    await h.stream("churn", 100, 0.05, version=2)
    closed = await h.store.get(event.incident_id)
    assert (closed.state, closed.live_points) == ("recovered", 100)


async def test_an_operator_resolves_an_incident_by_hand():
    h, event = await drifted()
    app = service_app(router, context=h.service)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://m") as c:
        url = f"/incidents/{event.incident_id}/resolve"
        body = {"actor": "alice", "reason": "the source system was fixed upstream"}
        assert (await c.post(url, json={"actor": "alice"})).status_code == 422
        done = await c.post(url, json=body)
        assert done.status_code == 200, done.text
        assert (done.json()["status"], done.json()["state"]) == ("closed", "resolved")
        again = await c.post(url, json=body)
        assert again.status_code == 409 and again.json()["reason"] == "incident_not_open"
        missing = await c.post("/incidents/nope/resolve", json=body)
        assert missing.status_code == 404 and missing.json()["reason"] == "unknown_incident"
    [update] = [u for u in h.publisher.of(IncidentUpdated) if u.state == "resolved"]
    assert not update.open and "alice" in update.reason
    assert h.service.status("churn")["open_incident"] is None


async def test_the_batch_path_reads_a_models_policy_once_then_the_tick_follows_it():
    h = Harness(feature_drift_enabled=False)
    h.service.policies = Policies(h.registry, ttl_s=0)  # every read would go to the registry
    register(h.registry, "churn", 1)
    await h.service.rebuild()
    await h.stream("churn", 50, 0.1)
    assert h.registry.calls.count("policy:churn") == 1, "not on every batch"
    h.registry.set_policy("churn", {"monitoring": {"recovery_min_points": 120}})
    await h.service.tick()
    assert h.service.models["churn"].policy.rules.min_points == 120
    h.registry.down = True  # the tick keeps the last policy
    await h.service.tick()
    await h.stream("churn", 10, 0.1)
    assert h.service.models["churn"].policy.rules.min_points == 120
