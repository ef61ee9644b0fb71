"""The whole closed loop on real protocols: six service processes, a Kafka-protocol broker, a
MongoDB-wire server and an S3 server, driven only through Kafka events and HTTP APIs.

train -> register -> evaluate -> promote -> serve -> concept drift -> DriftDetected -> retrain ->
evaluate against the champion on the same hold-out -> promote -> the new champion serves; the
batch service then scores a file in S3 with that champion.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import uuid
from pathlib import Path

import httpx
import pytest
import yaml
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from modelbus_contracts import (
    BatchScoringCompleted,
    DriftDetected,
    ModelEvaluated,
    ModelPromoted,
    ModelRegistered,
    ModelTrained,
    encode,
)
from modelbus_embedded.simulator import PLANS, ScenarioConfig, ScenarioResult, Upstream
from modelbus_embedded.stack import Stack, build_stack, free_ports
from modelbus_embedded.testing import collect
from modelbus_platform.signing import Signer, private_key
from modelbus_platform.stores import S3ObjectStore

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

FEATURES = ("tenure", "monthly_charges", "support_calls", "usage_drop")  # numbers; and "plan"
ROW = {  # one customer, as a v2 infer request
    "inputs": [
        *({"name": f, "shape": [1], "datatype": "FP64", "data": [0.1]} for f in FEATURES),
        {"name": "plan", "shape": [1], "datatype": "BYTES", "data": ["basic"]},
    ]
}

FAST_LOOP = {
    "MODELBUS_DRIFT_COOLDOWN_S": "5",
    "MODELBUS_DRIFT_MIN_ROWS": "500",
    "MODELBUS_LOG_LEVEL": "INFO",
}
RESULTS = Path(os.environ.get("MODELBUS_RESULTS_DIR", "build")) / "e2e-loop.json"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("stack")
    running = build_stack(
        data, object_store="s3", persistent_mongo=True, ports=free_ports(), extra_env=FAST_LOOP
    )
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
async def loop_result(stack: Stack) -> ScenarioResult:
    config = ScenarioConfig(
        model_name=f"e2e-{uuid.uuid4().hex[:8]}",
        initial_rows=2000,
        rate_per_s=400,
        drift_after_requests=1500,
        timeout_s=200,
    )
    upstream = Upstream(
        stack.kafka_bootstrap,
        stack.url("trainer"),
        stack.url("scorer"),
        config,
        api_key=stack.api_key("upstream"),
    )
    result = await upstream.run()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {"marks": result.marks, "requests": result.requests_sent, "labels": result.labels_sent},
            indent=2,
        )
    )
    return result


async def test_drift_retrains_and_promotes_a_better_model(loop_result: ScenarioResult):
    assert loop_result.completed, "the loop did not complete in time"
    promoted = loop_result.of(ModelPromoted)
    assert [p.version for p in promoted][:2] == [1, 2]
    drift = loop_result.of(DriftDetected)[0]
    retrained = [t for t in loop_result.of(ModelTrained) if t.lineage.trigger == "drift"]
    assert retrained, "no drift-triggered training run"
    assert retrained[0].correlation_id == drift.correlation_id
    assert retrained[0].lineage.parent_version == 1
    evaluated = next(e for e in loop_result.of(ModelEvaluated) if e.version == 2)
    assert evaluated.decision == "promote"
    assert evaluated.champion_version == 1
    assert evaluated.challenger_metrics["auc"] > evaluated.champion_metrics["auc"]
    assert promoted[1].correlation_id == drift.correlation_id, "correlation id lost in the loop"
    loop_s = loop_result.seconds("drift_onset", "new_champion_serving")
    assert loop_s is not None
    print(f"drift onset -> new champion serving: {loop_s:.1f}s")


async def test_every_decision_is_in_the_registry_audit(stack: Stack, loop_result: ScenarioResult):
    model = loop_result.model_name
    viewer = stack.auth_headers("viewer")
    async with httpx.AsyncClient(
        base_url=stack.url("registry"), timeout=10, headers=viewer
    ) as http:
        audit = (await http.get(f"/models/{model}/audit")).json()
        aliases = (await http.get(f"/models/{model}/aliases")).json()
    actions = [(a["action"], a.get("version")) for a in audit]
    assert ("promoted", 1) in actions and ("promoted", 2) in actions
    assert ("registered", 2) in actions
    assert aliases["champion"] == 2 and aliases["previous"] == 1
    async with httpx.AsyncClient(
        base_url=stack.url("deployer"), timeout=10, headers=viewer
    ) as http:
        decision = (await http.get(f"/decisions/{model}/2")).json()
    assert decision["decision"] == "promote"


async def test_the_stack_has_auth_on_and_audits_who_called_not_who_they_claim(
    stack: Stack, loop_result: ScenarioResult
):
    """No credentials (or a made-up key): 401 on reads and writes; the viewer's key: 403 on a
    write; the upstream's operator key: served, and the registry's audit names it, not the
    X-Actor it claims. Health stays open."""
    model = loop_result.model_name
    registry, scorer = stack.url("registry"), stack.url("scorer")
    champion = f"{registry}/models/{model}/aliases/champion"
    # a compare-and-set that cannot succeed (no alias is ever at that version): audited, nothing
    # moves, whatever the loop did
    stale = {"version": 1, "expected_version": 10**9, "reason": f"e2e auth {uuid.uuid4().hex}"}
    infer = f"{scorer}/v2/models/{model}/infer"
    writes = [("PUT", champion, stale), ("POST", infer, ROW)]
    reads = [
        ("GET", f"{registry}/models/{model}/audit", None),
        ("GET", f"{scorer}/v2/models/{model}/ready", None),
    ]
    claim = {"X-Actor": "mallory"}
    async with httpx.AsyncClient(timeout=10) as http:
        for method, url, body in writes + reads:
            for headers in (claim, {**claim, "Authorization": "Bearer mbk_made-up"}):
                refused = await http.request(method, url, json=body, headers=headers)
                assert refused.status_code == 401, (method, url, refused.text)
                assert refused.json()["reason"] == "unauthenticated"
                assert refused.headers["www-authenticate"] == "Bearer"
        for method, url, body in writes:
            low = await http.request(method, url, json=body, headers=stack.auth_headers("viewer"))
            assert low.status_code == 403, (method, url, low.text)
            assert low.json()["reason"] == "forbidden"
        for service in stack.services:
            health = await http.get(f"{stack.url(service)}/health/ready")
            assert health.status_code == 200, (service, health.text)
        operator = stack.auth_headers("upstream")
        served = await http.post(infer, json=ROW, headers=operator)
        assert served.status_code == 200, served.text
        conflict = await http.put(champion, json=stale, headers={**claim, **operator})
        assert conflict.status_code == 409, conflict.text
        audit = await http.get(
            f"{registry}/models/{model}/audit", headers=stack.auth_headers("viewer")
        )
        assert audit.status_code == 200, audit.text
    ours = [
        record
        for record in audit.json()
        if record["details"].get("request", {}).get("reason") == stale["reason"]
    ]
    assert [(r["action"], r["actor"]) for r in ours] == [("promotion_conflict", "upstream")]


async def test_duplicates_change_nothing_and_poison_is_dead_lettered(
    stack: Stack, loop_result: ScenarioResult
):
    model = loop_result.model_name
    trained_v1 = next(t for t in loop_result.of(ModelTrained) if t.lineage.trigger != "drift")
    trainer = Signer("trainer", private_key(stack.signing_key("trainer")))

    def headers(record, signed: bool = True) -> list[tuple[str, bytes]]:
        h = trainer.sign(record.topic, record.headers, record.value) if signed else record.headers
        return [(k, v.encode()) for k, v in h.items()]

    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
    await producer.start()
    try:
        # a redelivery (same event id) and a replay with a new id, both signed by the trainer
        for event in (trained_v1, trained_v1.model_copy(update={"event_id": uuid.uuid4()})):
            record = encode(event)
            await producer.send_and_wait(
                record.topic, record.value, key=record.key, headers=headers(record)
            )
        poison = encode(trained_v1)
        body = b'{"model_name": "x", "metrics": "oops"}'
        signed = trainer.sign(poison.topic, poison.headers, body)
        await producer.send_and_wait(
            poison.topic,
            body,
            key=poison.key,
            headers=[(k, v.encode()) for k, v in signed.items()],
        )
        # a forged ModelTrained (anyone on the network): unsigned, a new id, a new run
        forged = encode(
            trained_v1.model_copy(update={"event_id": uuid.uuid4(), "run_id": "forged-run"})
        )
        await producer.send_and_wait(
            forged.topic, forged.value, key=forged.key, headers=headers(forged, signed=False)
        )
    finally:
        await producer.stop()
    dead = await collect(stack.kafka_bootstrap, ModelTrained.topic + ".dlq", model, 15)
    reasons = sorted(dict(d.headers)["x-dlq-reason"].decode() for d in dead)
    assert len(reasons) == 2, reasons
    assert reasons[0].startswith("contract"), "malformed ModelTrained was not dead-lettered"
    assert reasons[1].startswith("signature: unsigned control event"), reasons
    registered = await collect(stack.kafka_bootstrap, ModelRegistered.topic, model, 3)
    assert sorted(json.loads(r.value)["version"] for r in registered) == [1, 2]
    viewer = stack.auth_headers("viewer")
    async with httpx.AsyncClient(
        base_url=stack.url("registry"), timeout=10, headers=viewer
    ) as http:
        versions = (await http.get(f"/models/{model}/versions")).json()
    assert len(versions) == 2
    promoted = await collect(stack.kafka_bootstrap, ModelPromoted.topic, model, 2)
    assert len(promoted) == 2


async def test_killed_scorer_comes_back_serving_the_champion(
    stack: Stack, loop_result: ScenarioResult
):
    model = loop_result.model_name
    proc = stack.services["scorer"]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    stack.services.pop("scorer")
    stack.start_service("scorer")
    await asyncio.to_thread(stack.wait_ready, "scorer", 60)
    async with httpx.AsyncClient(base_url=stack.url("scorer"), timeout=10) as http:
        for _ in range(100):
            ready = await http.get(
                f"/v2/models/{model}/ready", headers=stack.auth_headers("viewer")
            )
            if ready.status_code == 200:
                break
            await asyncio.sleep(0.1)
        response = await http.post(
            f"/v2/models/{model}/infer", json=ROW, headers=stack.auth_headers("upstream")
        )
    assert response.status_code == 200, response.text
    assert str(response.json()["model_version"]) == "2"


async def test_the_batch_service_scores_a_file_with_the_champion(
    stack: Stack, loop_result: ScenarioResult
):
    model = loop_result.model_name
    env = stack.env
    store = S3ObjectStore(
        env["MODELBUS_S3_ENDPOINT"], "modelbus", "modelbus-secret", env["MODELBUS_BUCKET"]
    )
    rows = ["id," + ",".join(FEATURES) + ",plan"] + [
        f"{i},{i % 7},{i % 5},{i % 3},0.{i % 9},{PLANS[i % 3]}" for i in range(500)
    ]
    await store.put(f"batch/{model}/day.csv", ("\n".join(rows) + "\n").encode(), "text/csv")
    async with httpx.AsyncClient(base_url=stack.url("batch"), timeout=10) as http:
        accepted = await http.post(
            "/batch-jobs",
            json={"model_name": model, "input_uri": f"batch/{model}/day.csv"},
            headers=stack.auth_headers("upstream"),
        )
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]
        for _ in range(300):
            job = (
                await http.get(f"/batch-jobs/{job_id}", headers=stack.auth_headers("viewer"))
            ).json()
            if job["state"] in ("succeeded", "failed"):
                break
            await asyncio.sleep(0.1)
    assert (job["state"], job["version"], job["rows_done"], job["failed_rows"]) == (
        "succeeded",
        2,
        500,
        0,
    ), job
    output = (await store.get(f"batch/{model}/day.scores.csv")).decode().splitlines()
    assert output[0] == '"id","score","label","model_version","error"' and len(output) == 501
    completed = await collect(stack.kafka_bootstrap, BatchScoringCompleted.topic, model, 3)
    assert [json.loads(r.value)["job_id"] for r in completed] == [job_id]


ASYNCAPI = Path(__file__).resolve().parents[2] / "infra" / "asyncapi"


def _documented(service: str) -> tuple[set[str], set[tuple[str, str]]]:
    """From a service's committed AsyncAPI document: the topics it sends, and the (topic,
    consumer group pattern) it receives."""
    document = yaml.safe_load((ASYNCAPI / f"{service}.yaml").read_text(encoding="utf-8"))
    sends, receives = set(), set()
    for operation in document["operations"].values():
        channel = document["channels"][operation["channel"]["$ref"].rsplit("/", 1)[-1]]
        if operation["action"] == "send":
            sends.add(channel["address"])
        else:
            receives.add((channel["address"], operation["x-modelbus-group"]))
    return sends, receives


def _running(text: str) -> tuple[set[str], set[tuple[str, str]]]:
    """From a service's /metrics: the topics it published, and the (topic, group) its consumers
    are assigned (the lag gauge covers every assigned topic) or consumed from."""
    sent, received = set(), set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "modelbus_events_published_total" and sample.value > 0:
                sent.add(labels["topic"])
            elif sample.name in ("modelbus_consumer_lag", "modelbus_events_consumed_total"):
                received.add((labels["topic"], labels["group"]))
    return sent, received


def _matches(group: str, pattern: str) -> bool:
    return (
        re.fullmatch(re.escape(pattern).replace(re.escape("{instance}"), ".+"), group) is not None
    )


async def test_asyncapi_documents_cover_what_the_running_services_send_and_receive(
    stack: Stack, loop_result: ScenarioResult
):
    await asyncio.sleep(6)  # one lag sample after the scorer's restart
    for service in stack.services:
        async with httpx.AsyncClient(base_url=stack.url(service), timeout=10) as http:
            sent, received = _running((await http.get("/metrics")).text)
        sends, receives = _documented(service)
        assert sent <= sends, (service, sent - sends)
        undocumented = {
            (topic, group)
            for topic, group in received
            if not any(t == topic and _matches(group, g) for t, g in receives)
        }
        assert not undocumented, (service, undocumented)
        unsubscribed = {
            (topic, g)
            for topic, g in receives
            if not any(t == topic and _matches(group, g) for t, group in received)
        }
        assert not unsubscribed, (service, unsubscribed)


async def test_a_model_trained_elsewhere_is_imported_judged_and_served(stack: Stack):
    """Bring your own model on the real stack: a scikit-learn pipeline exported to ONNX, a
    hold-out uploaded through the trainer, the import through the registry's API; the deployer
    promotes it on its gates and the scorer serves it through ONNX Runtime."""
    import numpy as np
    from skl2onnx import to_onnx
    from sklearn.ensemble import GradientBoostingClassifier

    model = f"byo-{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(3)
    X = np.c_[rng.uniform(18, 80, 1600), rng.uniform(1e4, 2e5, 1600)]
    y = ((X[:, 0] > 45) ^ (X[:, 1] > 1e5)).astype(int)
    estimator = GradientBoostingClassifier(random_state=0).fit(X[:1200], y[:1200])
    onnx_bytes = to_onnx(
        estimator, X[:1].astype(np.float32), options={id(estimator): {"zipmap": False}}
    ).SerializeToString()
    csv = "age,salary,label\n" + "".join(
        f"{float(a)!r},{float(s)!r},{int(t)}\n"
        for (a, s), t in zip(X[1200:], y[1200:], strict=True)
    )
    operator, viewer = stack.auth_headers("upstream"), stack.auth_headers("viewer")
    async with httpx.AsyncClient(timeout=30, headers=viewer) as http:
        stored = await http.put(
            f"{stack.url('trainer')}/datasets/{model}",
            content=csv,
            headers={"content-type": "text/csv", **operator},
        )
        assert stored.status_code == 200, stored.text
        imported = await http.post(
            f"{stack.url('registry')}/models/{model}/versions",
            content=onnx_bytes,
            headers={"content-type": "application/octet-stream", **operator},
            params={"feature_names": ["age", "salary"], "holdout_uri": stored.json()["uri"]},
        )
        assert imported.status_code == 201, imported.text
        assert imported.json()["artifact"]["format"] == "modelbus.onnx.v1"
        for _ in range(300):
            aliases = (await http.get(f"{stack.url('registry')}/models/{model}/aliases")).json()
            if aliases.get("champion") == 1:
                break
            await asyncio.sleep(0.1)
        assert aliases.get("champion") == 1, aliases
        decision = (await http.get(f"{stack.url('deployer')}/decisions/{model}/1")).json()
        assert decision["decision"] == "promote", decision
        for _ in range(300):
            ready = await http.get(f"{stack.url('scorer')}/v2/models/{model}/ready")
            if ready.status_code == 200:
                break
            await asyncio.sleep(0.1)
        row = X[1300]
        answer = await http.post(
            f"{stack.url('scorer')}/v2/models/{model}/infer",
            headers=operator,
            json={
                "inputs": [
                    {"name": n, "shape": [1], "datatype": "FP64", "data": [float(v)]}
                    for n, v in zip(("age", "salary"), row, strict=True)
                ]
            },
        )
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
    expected = estimator.predict_proba(row.astype(np.float32).reshape(1, -1))[0, 1]
    score = next(v for k, v in outputs.items() if "score" in k or "prob" in k)[0]
    assert abs(score - expected) < 1e-4
