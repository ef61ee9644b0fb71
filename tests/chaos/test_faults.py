"""The fault suite (issue 12, item 6): faults injected into the running stack while scoring
requests stream, each scenario keeping a ledger of what it sent and checking what came out.

- SIGKILL of each service mid-stream, restarted: every request answered (a prediction, or a
  dead letter / ScoringFailed with its reason), 0 lost, duplicates only under the same
  prediction id; the killed service's consumer groups catch up, and what was published while
  it was dead is handled once (a ModelTrained registered once, a ModelRegistered evaluated
  once, a TrainingRequested trained once, a BatchScoringRequested run once);
- the broker stopped (SIGSTOP) and continued; MongoDB-wire killed and restarted on its data:
  nothing lost, nothing dead-lettered because of the outage, a registration made during it
  finished afterwards, every service ready again;
- the object store resetting every upload while a training run stores its artifact: the run
  finishes after the store is back or fails with its reason; no version points at an artifact
  that is not in the store;
- poison on every consumed topic (larger than the 1 MB limit, garbage bytes, a 3.9 MB
  ScoringRequested of 250k unknown features, a 0.9 MB one whose refusal must stay small):
  each dead-lettered by every group that reads the topic, with its reason; valid requests sent
  after it answered within 10 s;
- the monitor killed while predictions and labels stream: its detector state counts every row
  once after the restart.

Stalls: ``LagWatch`` polls every consumer group's committed offsets; a partition with a backlog
and no progress outside the injected fault counts (at most 10 s). The module ends with the
table (stdout with ``-s``; ``build/chaos/results.json`` and ``.md``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from modelbus_contracts import (
    BatchScoringCompleted,
    BatchScoringRequested,
    LabelObserved,
    ModelEvaluated,
    ModelRegistered,
    ModelTrained,
    ScoringRequested,
    TrainingRequested,
    encode,
)
from modelbus_embedded.chaos import (
    FORM,
    Chaos,
    Ledger,
    Row,
    Stall,
    Stream,
    render_table,
    write_results,
)
from modelbus_embedded.stack import SERVICES
from modelbus_embedded.testing import collect, publish, trained_event, until
from modelbus_platform.bus import DLQ_GROUP, DLQ_REASON, DLQ_VALUE_BYTES

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.e2e,
    pytest.mark.integration,
    pytest.mark.timeout(3600 if FORM.name == "full" else 300),
]

RESULTS = Path(os.environ.get("MODELBUS_RESULTS_DIR", "build")) / "chaos"
MAX_STALL_S = 10.0
# a request's features: the two the champions were trained on
RNG = np.random.default_rng(12)
POINTS = RNG.normal(size=(100_000, 2))


def features(i: int) -> dict[str, float]:
    x1, x2 = POINTS[i % len(POINTS)]
    return {"x1": float(x1), "x2": float(x2)}


def truth(i: int) -> int:
    x1, x2 = POINTS[i % len(POINTS)]
    return int(2.0 * x1 - x2 > 0)


# -- helpers ----------------------------------------------------------------------------------


def kill(chaos: Chaos, service: str) -> None:
    proc = chaos.stack.services.pop(service)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


async def restart(chaos: Chaos, service: str) -> None:
    """Start ``service`` again; wait until it is ready (its consumers in their groups)."""
    chaos.stack.start_service(service)
    await asyncio.to_thread(chaos.stack.wait_ready, service, 180)


async def all_ready(chaos: Chaos, timeout: float) -> dict[str, str]:
    """Wait until every service's readiness is 200; the ones that are not at the deadline."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as http:
        while True:
            not_ready = {}
            for service in SERVICES:
                try:
                    answer = await http.get(f"{chaos.stack.url(service)}/health/ready")
                    if answer.status_code != 200:
                        not_ready[service] = answer.text
                except httpx.HTTPError as exc:
                    not_ready[service] = str(exc)
            if not not_ready or time.monotonic() > deadline:
                return not_ready
            await asyncio.sleep(0.5)


async def streaming(chaos: Chaos, ledger: Ledger, models: list[str] | None = None) -> Stream:
    return await Stream(
        chaos.bootstrap, chaos.outputs, ledger, models or chaos.models, FORM.rate, features
    ).start()


def record(chaos: Chaos, row: Row, started: float) -> Row:
    row.seconds = time.monotonic() - started
    chaos.rows.append(row)
    print(f"\n{row}")
    return row


def still_behind(behind: dict) -> list[str]:
    return [f"still behind: {behind}"] if behind else []


def conclude(
    chaos: Chaos,
    scenario: str,
    ledger: Ledger,
    tally,
    started: float,
    problems: list[str],
    info: list[str] | tuple[str, ...] = (),
    dead_lettered: int = 0,
) -> Row:
    """Record a streaming scenario's row (its ``problems`` fail it, ``info`` only informs) and
    assert it: nothing lost, no duplicate under another id, no long stall, no problem, and no
    valid request refused."""
    notes = [*problems, *info]
    row = Row.of(scenario, tally, chaos.watch.longest, state_ok=not problems, notes=notes)
    row.dead_lettered += dead_lettered
    record(chaos, row, started)
    assert_row(row, tally)
    assert tally.failed == 0, f"valid requests refused: {ledger.failures}"
    return row


def assert_row(row: Row, tally=None) -> None:
    lost = tally.lost_ids if tally is not None else []
    assert row.lost == 0, f"{row.scenario}: {row.lost} lost, e.g. {lost}"
    assert row.split_ids == 0, f"{row.scenario}: duplicates under other prediction ids"
    assert row.stall_s <= MAX_STALL_S, f"{row.scenario}: stalled {row.stall_s} s ({row.notes})"
    assert row.state_ok, f"{row.scenario}: {row.notes}"


async def versions(chaos: Chaos, http: httpx.AsyncClient, name: str) -> list[dict]:
    answer = await http.get(f"{chaos.stack.url('registry')}/models/{name}/versions")
    return answer.json() if answer.status_code == 200 else []


async def count_on(chaos: Chaos, topic: str, key: str, match=None) -> int:
    records = await collect(chaos.bootstrap, topic, key, 2)
    bodies = [json.loads(r.value) for r in records]
    return sum(1 for b in bodies if match is None or match(b))


# -- 1. SIGKILL of each service mid-stream -----------------------------------------------------


async def during_death(chaos: Chaos, service: str, http: httpx.AsyncClient) -> dict:
    """What is published for ``service`` to handle while it is dead; what to check after."""
    uid = f"{chaos.uid}-{service}"
    if service in ("registry", "deployer"):
        name = f"chaos-{uid}"
        event = await trained_event(chaos.store, name, seed=5, signer=chaos.signer("trainer"))
        await publish(chaos.bootstrap, event, signer=chaos.signer("trainer"))
        return {"name": name, "run_id": event.run_id}
    if service == "trainer":
        event = TrainingRequested(
            producer="chaos",
            model_name=f"chaos-{uid}",
            reason="api",
            dataset_uri=chaos.datasets[chaos.models[0]],
            params={"family": "logreg"},
            seed=3,
        )
        await publish(chaos.bootstrap, event)
        return {"name": event.model_name, "event_id": str(event.event_id)}
    if service == "batch":
        name = chaos.models[0]
        key = f"batch/{name}/{uid}.csv"
        rows = "\n".join(f"{x1},{x2}" for x1, x2 in POINTS[:50].tolist())
        await chaos.store.put(key, f"x1,x2\n{rows}\n".encode(), "text/csv")
        event = BatchScoringRequested(
            producer="chaos", model_name=name, job_id=f"job-{uid}", input_uri=key
        )
        await publish(chaos.bootstrap, event)
        return {"name": name, "job_id": event.job_id}
    return {}


async def handled_once(chaos: Chaos, service: str, http: httpx.AsyncClient, it: dict) -> str:
    """Empty when what was published during the death was handled exactly once; else why."""
    if not it:
        return ""
    name = it["name"]
    if service == "registry":

        async def registered():
            found = await versions(chaos, http, name)
            return found if found else None

        found = await until(registered, 60)
        await asyncio.sleep(2)
        found = await versions(chaos, http, name)
        announced = await count_on(chaos, ModelRegistered.topic, name)
        if [v["run_id"] for v in found] != [it["run_id"]] or announced != 1:
            return f"registered {len(found)} versions, {announced} ModelRegistered"
        return ""
    if service == "deployer":

        async def evaluated():
            return await count_on(chaos, ModelEvaluated.topic, name)

        await until(evaluated, 60)
        await asyncio.sleep(2)
        n = await count_on(chaos, ModelEvaluated.topic, name)
        return "" if n == 1 else f"{n} ModelEvaluated for v1"
    if service == "trainer":
        runs_url = f"{chaos.stack.url('trainer')}/runs?model_name={name}"

        async def finished():
            runs = (await http.get(runs_url)).json()
            return runs if runs and all(r["state"] in ("succeeded", "failed") for r in runs) else 0

        runs = await until(finished, 120)
        trained = await count_on(chaos, ModelTrained.topic, name)
        states = [r["state"] for r in runs]
        return "" if states == ["succeeded"] and trained == 1 else f"{states}, {trained} trained"
    if service == "batch":
        job_url = f"{chaos.stack.url('batch')}/batch-jobs/{it['job_id']}"

        async def done():
            answer = await http.get(job_url)
            return answer.status_code == 200 and answer.json()["state"] in ("succeeded", "failed")

        await until(done, 120)
        job = (await http.get(job_url)).json()
        completed = await count_on(
            chaos, BatchScoringCompleted.topic, name, lambda b: b["job_id"] == it["job_id"]
        )
        if job["state"] != "succeeded" or completed != 1:
            return f"job {job['state']} ({job.get('error')}), {completed} completed"
        return ""
    return ""


# the full form kills one service at a time; the short form all six at once (one restart of
# the lot instead of six: the same checks, a sixth of the time)
KILLS = [(service,) for service in SERVICES] if FORM.name == "full" else [tuple(SERVICES)]


@pytest.mark.parametrize("services", KILLS, ids=lambda s: "+".join(s))
async def test_sigkill_mid_stream(chaos: Chaos, services: tuple[str, ...]):
    started = time.monotonic()
    label = services[0] if len(services) == 1 else "all six services"
    ledger = Ledger(f"kill-{services[0] if len(services) == 1 else 'all'}-{chaos.uid}")
    chaos.watch.reset()
    stream = await streaming(chaos, ledger)
    async with chaos.http() as http:
        try:
            await asyncio.sleep(FORM.lead_s)
            with chaos.watch.fault():
                for service in services:
                    kill(chaos, service)
                during = {s: await during_death(chaos, s, http) for s in services}
                await asyncio.sleep(1.0)
                for service in services:
                    chaos.stack.start_service(service)
                for service in services:
                    await asyncio.to_thread(chaos.stack.wait_ready, service, 180)
            await asyncio.sleep(FORM.lead_s)
        finally:
            await stream.stop()
        tally = await ledger.settle(90)
        behind = await chaos.watch.caught_up(60)
        problems = {s: await handled_once(chaos, s, http, it) for s, it in during.items()}
    notes = [f"{s}: {p}" for s, p in problems.items() if p] + still_behind(behind)
    conclude(chaos, f"SIGKILL {label}", ledger, tally, started, notes)


# -- 2. the broker stopped ---------------------------------------------------------------------


async def test_broker_stopped_and_continued(chaos: Chaos):
    started = time.monotonic()
    ledger = Ledger(f"broker-{chaos.uid}")
    chaos.watch.reset()
    kafka = next(s for s in chaos.stack.servers if s.name == "kafka")
    assert kafka.proc is not None
    stream = await streaming(chaos, ledger)
    try:
        await asyncio.sleep(FORM.lead_s)
        with chaos.watch.fault():
            os.killpg(kafka.proc.pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(FORM.outage_s)
            finally:
                os.killpg(kafka.proc.pid, signal.SIGCONT)
        # the fault is over at SIGCONT: from there on a partition not moving is a stall
        back = time.monotonic()
        not_ready = await all_ready(chaos, 120)
        ready_s = time.monotonic() - back
        await asyncio.sleep(FORM.lead_s)
    finally:
        await stream.stop()
    tally = await ledger.settle(120)
    behind = await chaos.watch.caught_up(60)
    notes = [f"not ready: {sorted(not_ready)}"] if not_ready else []
    info = [f"every service ready {ready_s:.1f} s after SIGCONT"]
    scenario = f"broker SIGSTOP {FORM.outage_s:.0f} s"
    conclude(chaos, scenario, ledger, tally, started, notes + still_behind(behind), info)


# -- 3. MongoDB down ---------------------------------------------------------------------------


async def test_mongodb_down_and_back(chaos: Chaos):
    started = time.monotonic()
    ledger = Ledger(f"mongo-{chaos.uid}")
    chaos.watch.reset()
    mongo = next(s for s in chaos.stack.servers if s.name == "mongo")
    dead_before = len(chaos.outputs.dead_letters)
    name = f"chaos-{chaos.uid}-mongo"
    trainer = chaos.signer("trainer")
    event = await trained_event(chaos.store, name, seed=9, signer=trainer)
    stream = await streaming(chaos, ledger)
    try:
        await asyncio.sleep(FORM.lead_s)
        with chaos.watch.fault():
            mongo.kill()
            # a registration to make while MongoDB is down
            await publish(chaos.bootstrap, event, signer=trainer)
            await asyncio.sleep(FORM.outage_s)
            await asyncio.to_thread(mongo.start)
        # the fault is over once MongoDB listens again: from there on a stall counts
        back = time.monotonic()
        not_ready = await all_ready(chaos, 120)
        ready_s = time.monotonic() - back
        await asyncio.sleep(FORM.lead_s)
    finally:
        await stream.stop()
    tally = await ledger.settle(120)
    behind = await chaos.watch.caught_up(60)
    async with chaos.http() as http:

        async def registered():
            return await versions(chaos, http, name)

        try:
            found = await until(registered, 60)
        except AssertionError:
            found = []
    dead = chaos.outputs.dead_letters[dead_before:]
    notes = [f"not ready: {sorted(not_ready)}"] if not_ready else []
    notes += still_behind(behind)
    if [v["run_id"] for v in found] != [event.run_id]:
        notes.append(f"the registration made during the outage: {len(found)} versions")
    if dead:
        notes.append(f"{len(dead)} dead letters: {[h.get(DLQ_REASON) for _, h, _ in dead[:3]]}")
    info = [f"every service ready {ready_s:.1f} s after MongoDB was back"]
    scenario = f"MongoDB down {FORM.outage_s:.0f} s"
    conclude(chaos, scenario, ledger, tally, started, notes, info, dead_lettered=len(dead))


# -- 4. the object store failing during an artifact upload ------------------------------------


async def test_store_fails_during_artifact_upload(chaos: Chaos):
    started = time.monotonic()
    chaos.watch.reset()
    name = f"chaos-{chaos.uid}-store"
    trainer = chaos.stack.url("trainer")
    async with chaos.http() as http:
        csv = chaos.datasets[chaos.models[0]]
        resets_before = chaos.proxy.resets
        with chaos.watch.fault():
            # the artifact's upload fails; reads and the data snapshots' uploads work
            chaos.proxy.write_prefix = f"/{chaos.stack.env['MODELBUS_BUCKET']}/artifacts/"
            chaos.proxy.mode = "reset_writes"
            try:
                answer = await http.post(
                    f"{trainer}/models/{name}/train",
                    json={"dataset_uri": csv, "params": {"family": "logreg"}, "seed": 11},
                )
                assert answer.status_code in (200, 202), answer.text
                run_id = answer.json()["run_id"]
                await asyncio.sleep(FORM.outage_s)
            finally:
                chaos.proxy.mode = "pass"

        async def finished():
            run = (await http.get(f"{trainer}/runs/{run_id}")).json()
            return run if run["state"] in ("succeeded", "failed") else None

        run = await until(finished, 180)
        await asyncio.sleep(3)  # a registration, if the run succeeded
        found = await versions(chaos, http, name)
        not_ready = await all_ready(chaos, 60)
    broken = []
    for version in found:
        try:
            data = await chaos.store.get(version["artifact"]["uri"])
        except Exception as exc:
            broken.append(f"v{version['version']}: {type(exc).__name__}")
            continue
        if hashlib.sha256(data).hexdigest() != version["artifact"]["sha256"]:
            broken.append(f"v{version['version']}: other bytes")
    reason = run.get("error") or run.get("reason") or ""
    notes = [f"run {run['state']}" + (f": {reason[:120]}" if reason else "")]
    ok = not broken and not not_ready and (run["state"] == "succeeded" or bool(reason))
    if run["state"] == "succeeded" and len(found) != 1:
        ok = False
        notes.append(f"succeeded but {len(found)} versions registered")
    if run["state"] == "failed" and found:
        ok = False
        notes.append(f"failed but {len(found)} versions registered")
    if broken:
        notes.append(f"versions without their artifact: {broken}")
    if not_ready:
        notes.append(f"not ready: {sorted(not_ready)}")
    resets = chaos.proxy.resets - resets_before
    notes.append(f"{resets} uploads reset")
    row = record(
        chaos,
        Row(
            f"store fails uploads {FORM.outage_s:.0f} s",
            sent=1,
            answered=int(run["state"] == "succeeded"),
            failed=int(run["state"] == "failed"),
            stall_s=round(chaos.watch.longest.seconds, 1),
            state_ok=ok,
            notes=notes,
        ),
        started,
    )
    assert resets > 0, "the fault was not exercised: no upload went through the proxy"
    assert_row(row)


# -- 5. poison on every consumed topic --------------------------------------------------------


def poison_records(chaos: Chaos) -> list[tuple[str, bytes, bytes, str, str]]:
    """(topic, key, value, chaos id, expected reason prefix) for every consumed topic: a value
    above the 1 MB limit, garbage bytes (signed by the topic's publisher on a control topic, so
    it is the content that is refused), and on scoring.requested.v1 a 3.9 MB request of 250k
    unknown features."""
    rng = np.random.default_rng(3)
    out = []
    for i, topic in enumerate(sorted(chaos.consumed)):
        key = chaos.models[i % len(chaos.models)]
        out.append((topic, key.encode(), b"x" * 1_100_000, uuid.uuid4().hex, "too_large"))
        out.append((topic, key.encode(), rng.bytes(2048), uuid.uuid4().hex, "contract"))
    huge = ScoringRequested(
        producer="chaos",
        model_name=chaos.models[0],
        request_id=f"poison-{chaos.uid}-huge",
        features={f"unknown_{i}": float(i) for i in range(250_000)},
    )
    record = encode(huge)
    assert len(record.value) > 3_000_000
    out.append((record.topic, record.key, record.value, uuid.uuid4().hex, "too_large"))
    return out


async def test_poison_on_every_consumed_topic(chaos: Chaos):
    started = time.monotonic()
    chaos.watch.reset()
    records = poison_records(chaos)
    producer = AIOKafkaProducer(
        bootstrap_servers=chaos.bootstrap, max_request_size=8_000_000, linger_ms=5
    )
    await producer.start()
    try:
        for topic, key, value, cid, _ in records:
            headers: dict[str, str] = {"chaos-id": cid}
            publisher = chaos.publisher.get(topic)
            if publisher and len(value) < 1_000_000:
                headers = chaos.signer(publisher).sign(topic, headers, value)
            await producer.send_and_wait(
                topic, value, key=key, headers=[(k, v.encode()) for k, v in headers.items()]
            )
    finally:
        await producer.stop()
    # a valid request of 40k unknown features (0.9 MB): refused with a bounded reason
    ledger = Ledger(f"poison-{chaos.uid}")
    wide = Stream(
        chaos.bootstrap,
        chaos.outputs,
        ledger,
        [chaos.models[1]],
        1.0,
        lambda i: {f"unknown_{j}": float(j) for j in range(40_000)},
        max_request_size=8_000_000,
    )
    wide_ids = await wide.send_once(1)
    # valid requests right behind the poison, on every partition
    after = Stream(chaos.bootstrap, chaos.outputs, ledger, chaos.models, FORM.rate, features)
    after.count = 1
    valid_ids = await after.send_once(30)
    tally = await ledger.settle(60)
    behind = await chaos.watch.caught_up(60)

    expected = {  # chaos id -> (topic, reason, groups that must dead-letter it)
        cid: (topic, reason, {g for _, g in chaos.consumed[topic]})
        for topic, _, _, cid, reason in records
    }

    def missing() -> dict:
        seen: dict[str, dict[str, str]] = {}
        for _, headers, _ in chaos.outputs.dead_letters:
            cid = headers.get("chaos-id")
            if cid in expected:
                seen.setdefault(cid, {})[headers[DLQ_GROUP]] = headers[DLQ_REASON]
        gaps = {}
        for cid, (topic, reason, groups) in expected.items():
            got = seen.get(cid, {})
            wrong = {g: r[:80] for g, r in got.items() if not r.startswith(reason)}
            if groups - set(got) or wrong:
                gaps[f"{topic} {reason}"] = {"missing": sorted(groups - set(got)), "wrong": wrong}
        return gaps

    async def all_dead_lettered():
        return not missing()

    try:
        await until(all_dead_lettered, 60)
    except AssertionError:
        pass
    gaps = missing()
    oversized_dead = [size for _, _, size in chaos.outputs.dead_letters if size > DLQ_VALUE_BYTES]
    slowest = max(ledger.latencies(valid_ids), default=0.0)
    wide_failed = ledger.failures.get(wide_ids[0], [])
    wide_bytes = chaos.outputs.scoring_failed_bytes.get(wide_ids[0], 0)
    notes = []
    if gaps:
        notes.append(f"not dead-lettered as expected: {gaps}")
    if oversized_dead:
        notes.append(f"dead letters above {DLQ_VALUE_BYTES} bytes: {oversized_dead[:3]}")
    if slowest > MAX_STALL_S:
        notes.append(f"valid requests after the poison answered after {slowest:.1f} s")
    if not wide_failed or wide_bytes > 64_000:
        notes.append(f"0.9 MB request: {len(wide_failed)} ScoringFailed of {wide_bytes} bytes")
    notes += still_behind(behind)
    pairs = sum(len(groups) for _, _, groups in expected.values())
    lost_pairs = sum(len(g["missing"]) for g in gaps.values())
    stall = max(chaos.watch.longest, Stall(slowest, "valid after poison"), key=lambda s: s.seconds)
    row = record(
        chaos,
        Row(
            "poison on every consumed topic",
            sent=len(records) + tally.sent,
            answered=tally.answered,
            failed=tally.failed,
            dead_lettered=pairs - lost_pairs,
            lost=lost_pairs + tally.lost,
            duplicates=tally.duplicates,
            split_ids=tally.split_ids,
            stall_s=round(stall.seconds, 1),
            state_ok=not notes,
            notes=notes or [f"{len(records)} poison records, {pairs} (record, group) pairs"],
        ),
        started,
    )
    assert_row(row, tally)


class NowhereStore:
    """A store that keeps nothing: a ModelTrained made with it names an artifact and a
    hold-out that do not exist."""

    async def put(self, *args, **kwargs) -> None:
        return None


async def test_semantically_bad_events_are_refused_with_a_reason(chaos: Chaos):
    """Valid events that cannot be acted on: each refused with its reason where its consumer
    reports (a ScoringFailed, the registry's audit, a failed run, a failed job), none
    dead-lettered as transient nor waited on forever (no stall)."""
    started = time.monotonic()
    chaos.watch.reset()
    uid = chaos.uid
    trainer_signer = chaos.signer("trainer")
    ghost = await trained_event(NowhereStore(), f"chaos-{uid}-ghost", seed=4, signer=trainer_signer)
    training = TrainingRequested(
        producer="chaos",
        model_name=f"chaos-{uid}-nodata",
        reason="api",
        dataset_uri=f"datasets/chaos-{uid}-nodata/missing.csv",
        params={"family": "logreg"},
    )
    job = BatchScoringRequested(
        producer="chaos",
        model_name=chaos.models[0],
        job_id=f"job-{uid}-missing",
        input_uri=f"batch/{chaos.models[0]}/missing-{uid}.csv",
    )
    unknown = ScoringRequested(
        producer="chaos",
        model_name=f"chaos-{uid}-unknown",
        request_id=f"bad-{uid}-unknown",
        features={"x1": 1.0},
    )
    label = LabelObserved(
        producer="chaos", model_name=chaos.models[0], prediction_id=f"nope-{uid}", label=1
    )
    ledger = Ledger(f"bad-{uid}")
    chaos.outputs.track(ledger, unknown.request_id, str(unknown.event_id))
    await publish(chaos.bootstrap, ghost, signer=trainer_signer)
    await publish(chaos.bootstrap, training, job, unknown, label)
    outcomes: dict[str, str] = {}
    async with chaos.http("viewer") as http:

        async def refused_ghost():
            audit = await http.get(f"{chaos.stack.url('registry')}/models/{ghost.model_name}/audit")
            rows = audit.json() if audit.status_code == 200 else []
            return [r for r in rows if r["action"] == "registration_rejected"]

        async def failed_run():
            runs = await http.get(
                f"{chaos.stack.url('trainer')}/runs", params={"model_name": training.model_name}
            )
            done = [r for r in runs.json() if r["state"] in ("failed", "succeeded")]
            return done

        async def failed_job():
            answer = await http.get(f"{chaos.stack.url('batch')}/batch-jobs/{job.job_id}")
            done = answer.status_code == 200 and answer.json()["state"] in ("failed", "succeeded")
            return answer.json() if done else None

        async def refused_request():
            return ledger.failures.get(unknown.request_id)

        checks = {
            "ModelTrained, artifact not in the store": (
                refused_ghost,
                lambda found: found[0]["reason"],
            ),
            "TrainingRequested, dataset not in the store": (
                failed_run,
                lambda runs: f"{runs[0]['state']}: {runs[0].get('reason')}",
            ),
            "BatchScoringRequested, input not in the store": (
                failed_job,
                lambda j: f"{j['state']}: {j.get('error')}",
            ),
            "ScoringRequested, unknown model": (refused_request, lambda errors: errors[0]),
        }
        for what, (check, why) in checks.items():
            try:
                outcomes[what] = why(await until(check, 60))
            except AssertionError:
                outcomes[what] = ""
        ghost_versions = await versions(chaos, http, ghost.model_name)
    behind = await chaos.watch.caught_up(60)
    dead = [
        h.get(DLQ_REASON, "")
        for e in (ghost, training, job, unknown, label)
        for h in chaos.outputs.dead_lettered(str(e.event_id))
    ]
    refused = {w: o for w, o in outcomes.items() if o and not o.startswith("succeeded")}
    notes = [f"{w}: {o[:100]}" for w, o in outcomes.items()]
    notes.append("LabelObserved of an unknown prediction: nothing reports it; no stall either")
    if ghost_versions:
        notes.append(f"a version of the ghost model was registered: {ghost_versions}")
    if dead:
        notes.append(f"dead-lettered: {dead}")
    notes += still_behind(behind)
    row = record(
        chaos,
        Row(
            "semantically bad events",
            sent=len(checks),
            failed=len(refused),
            dead_lettered=len(dead),
            lost=len(checks) - len(refused),
            stall_s=round(chaos.watch.longest.seconds, 1),
            state_ok=not ghost_versions and not behind,
            notes=notes,
        ),
        started,
    )
    assert row.lost == 0, f"not refused with a reason: {outcomes}"
    assert_row(row)


# -- 6. the monitor killed mid-stream: its detector state -------------------------------------


async def monitor_status(chaos: Chaos, http: httpx.AsyncClient) -> dict:
    answer = await http.get(f"{chaos.stack.url('monitor')}/models/{chaos.monitored}/status")
    return answer.json() if answer.status_code == 200 else {}


def detector_counts(status: dict) -> dict[str, int]:
    """Each detector's observations (``__error__``: labelled rows; a feature's: predictions)."""
    return {
        name: d.get("observations", 0)
        for name, d in (status.get("detectors") or {}).items()
        if isinstance(d, dict)
    }


async def test_monitor_killed_keeps_its_detector_state(chaos: Chaos):
    started = time.monotonic()
    chaos.watch.reset()
    ledger = Ledger(f"monitor-{chaos.uid}")
    n = FORM.monitor_rows
    async with chaos.http("viewer") as http:
        # the monitor may know the model (its promotion) but has counted nothing of it yet
        base = detector_counts(await monitor_status(chaos, http))
        stream = await streaming(chaos, ledger, [chaos.monitored])
        labels = AIOKafkaProducer(bootstrap_servers=chaos.bootstrap, linger_ms=5)
        await labels.start()
        labelled: set[str] = set()

        async def label_what_came() -> None:
            batch = []
            for rid, pids in list(ledger.predictions.items()):
                if rid in labelled:
                    continue
                labelled.add(rid)
                i = int(rid.rsplit("-", 1)[1])
                event = LabelObserved(
                    producer="chaos",
                    model_name=chaos.monitored,
                    prediction_id=pids[0],
                    label=truth(i),
                )
                batch.append(event)
            if batch:
                for event in batch:
                    record = encode(event)
                    headers = [(k, v.encode()) for k, v in record.headers.items()]
                    await labels.send(record.topic, record.value, key=record.key, headers=headers)
                await labels.flush()

        try:
            killed = False
            with chaos.watch.fault():
                while stream.count < n:
                    await label_what_came()
                    if not killed and stream.count >= n // 2:
                        kill(chaos, "monitor")
                        killed = True
                        await asyncio.sleep(1.0)
                        await restart(chaos, "monitor")
                    await asyncio.sleep(0.2)
        finally:
            await stream.stop()
        tally = await ledger.settle(60)
        await label_what_came()
        await labels.stop()
        predicted = len(ledger.predictions)

        # settled: every row in the error stream, or its count unmoved for 5 s
        last, since, deadline = -1, time.monotonic(), time.monotonic() + 120
        while time.monotonic() < deadline:
            counts = detector_counts(await monitor_status(chaos, http))
            counted = counts.get("__error__", 0) - base.get("__error__", 0)
            if counted != last:
                last, since = counted, time.monotonic()
            if counted >= predicted or time.monotonic() - since > 5:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(3)  # anything counted twice would show by now
        status = await monitor_status(chaos, http)
    behind = await chaos.watch.caught_up(60, ["monitor"])
    joined = status.get("joined", 0)
    detectors = {k: n - base.get(k, 0) for k, n in detector_counts(status).items()}
    print(f"\nmonitor status after the restart: {json.dumps(status)[:2000]}")
    notes = [
        f"{predicted} predictions labelled; the monitor's detectors count {detectors} "
        f"(joined since its start: {joined})"
    ]
    # the detector state: every labelled row once in the error stream, every prediction once
    # in each feature's detectors (the joined counter is the process's, not checkpointed)
    state_ok = bool(detectors) and all(n == predicted for n in detectors.values())
    if behind:
        notes.append(f"still behind: {behind}")
        state_ok = False
    row = record(
        chaos,
        Row.of(
            "SIGKILL monitor: detector state",
            tally,
            chaos.watch.longest,
            state_ok=state_ok,
            notes=notes,
        ),
        started,
    )
    assert_row(row, tally)


# -- the table --------------------------------------------------------------------------------


def test_the_table(chaos: Chaos):
    print(f"\nfault suite, {FORM.name} form")
    print(render_table(chaos.rows))
    for row in chaos.rows:
        for note in row.notes:
            print(f"  {row.scenario}: {note}")
    write_results(chaos.rows, RESULTS, FORM.name)
    assert chaos.rows, "no scenario ran"
