"""The service layer on in-memory fakes: runs, idempotency, drift guards, reproducibility."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import httpx
import pytest
from trainer_fixtures import Clock, Harness, drift_event, feedback_events, make_dataset

from modelbus_contracts import ModelTrained, TrainingRequested
from modelbus_platform.stores import ObjectConflict, sha256_hex
from modelbus_trainer import handlers
from modelbus_trainer.bootstrap import build_app
from modelbus_trainer.config import TrainerSettings
from modelbus_trainer.domain import new_run, run_id_for


async def _put(h: Harness, model: str, rows: int = 200, seed: int = 0) -> str:
    stored = await h.service.put_dataset(model, make_dataset(rows, seed).to_csv_bytes())
    return stored["uri"]


async def _train(h: Harness, event: TrainingRequested) -> dict:
    await h.service.on_training_requested(event)
    await h.service.drain(10)
    return await h.runs.get(run_id_for(event.event_id))


async def test_training_request_stores_snapshots_and_emits_model_trained():
    h = Harness()
    uri = await _put(h, "m")
    event = TrainingRequested(model_name="m", dataset_uri=uri, seed=3)
    run = await _train(h, event)

    assert run["state"] == "succeeded", run["reason"]
    [trained] = h.publisher.of(ModelTrained)
    assert trained.correlation_id == event.correlation_id
    assert trained.causation_id == event.event_id
    assert trained.run_id == run["run_id"]
    artifact = h.store.objects[trained.artifact.uri]
    assert sha256_hex(artifact) == trained.artifact.sha256 == run["artifact"]["sha256"]
    assert trained.artifact.uri == f"artifacts/m/{trained.artifact.sha256}.json"
    lineage = trained.lineage
    assert lineage.dataset.uri == uri and lineage.dataset.rows == 200
    assert sha256_hex(h.store.objects[lineage.holdout.uri]) == lineage.holdout.sha256
    assert lineage.holdout.rows == 50
    assert (lineage.seed, lineage.trigger, lineage.code_version) == (3, "manual", "test")
    assert lineage.trigger_event_id == event.event_id
    assert trained.feature_names == ["x1", "x2"]
    assert set(trained.reference) == {"x1", "x2"} and trained.reference["x1"].count == 150
    assert trained.metrics["rows"] == 50
    assert run["timings"]["total_seconds"] >= run["timings"]["training_seconds"] >= 0
    assert await h.locks.holder("m") is None


async def test_redelivered_trigger_creates_no_second_run():
    h = Harness()
    event = TrainingRequested(model_name="m", dataset_uri=await _put(h, "m"))
    await h.service.on_training_requested(event)
    assert await h.service.on_training_requested(event) is None
    await h.service.drain(10)
    assert len(h.runs.runs) == 1
    assert len(h.publisher.of(ModelTrained)) == 1


async def test_snapshots_are_written_only_once():
    h = Harness(train_dedupe_window_s=0)  # the same run twice
    uri = await _put(h, "m")
    await _train(h, TrainingRequested(model_name="m", dataset_uri=uri))
    puts = h.store.puts
    await _train(h, TrainingRequested(model_name="m", dataset_uri=uri))
    assert h.store.puts == puts  # same dataset, holdout and artifact: nothing new written


async def test_bad_or_missing_dataset_fails_the_run_with_the_reason():
    h = Harness()
    h.store.objects["datasets/m/bad.csv"] = b"a,b\n1,2\n"
    bad = await _train(h, TrainingRequested(model_name="m", dataset_uri="datasets/m/bad.csv"))
    missing = await _train(h, TrainingRequested(model_name="m", dataset_uri="datasets/m/no.csv"))
    assert bad["state"] == "failed" and "no 'label' column" in bad["reason"]
    assert missing["state"] == "failed" and "not found" in missing["reason"]
    assert h.publisher.events == []
    assert await h.locks.holder("m") is None


async def test_same_data_params_and_seed_give_a_byte_identical_artifact():
    h = Harness(train_dedupe_window_s=0)  # the same run twice
    uri = await _put(h, "m")
    params = {"family": "logreg", "epochs": 150, "l2": 0.01}
    shas = []
    for _ in range(2):
        run = await _train(h, TrainingRequested(model_name="m", dataset_uri=uri, params=params))
        shas.append(run["artifact"]["sha256"])
    assert shas[0] == shas[1]
    first, second = h.publisher.of(ModelTrained)
    assert first.lineage.holdout == second.lineage.holdout
    assert first.run_id != second.run_id


async def test_different_seed_or_data_gives_a_different_artifact():
    h = Harness()
    uri = await _put(h, "m", seed=0)
    other = await _put(h, "m", seed=1)
    base = await _train(h, TrainingRequested(model_name="m", dataset_uri=uri, seed=1))
    reseeded = await _train(h, TrainingRequested(model_name="m", dataset_uri=uri, seed=2))
    new_data = await _train(h, TrainingRequested(model_name="m", dataset_uri=other, seed=1))
    shas = {r["artifact"]["sha256"] for r in (base, reseeded, new_data)}
    assert len(shas) == 3


async def test_training_request_without_dataset_uses_complete_feedback_since():
    h = Harness()
    clock = h.clock
    await h.add_feedback(feedback_events("m", 30, clock.now))
    later = clock.now + timedelta(hours=1)
    await h.add_feedback(feedback_events("m", 80, later, seed=2))
    await h.service.record_prediction(feedback_events("m", 1, later)[0][0])  # no label yet
    run = await _train(h, TrainingRequested(model_name="m", since=later))
    assert run["state"] == "succeeded", run["reason"]
    assert run["dataset"]["rows"] == 80
    everything = await _train(h, TrainingRequested(model_name="m"))
    assert everything["dataset"]["rows"] == 110


async def test_feedback_join_ignores_arrival_order_and_shadow_predictions():
    h = Harness()
    [(p1, l1)] = feedback_events("m", 1, h.clock.now)
    [(p2, l2)] = feedback_events("m", 1, h.clock.now, served_by="shadow")
    await h.service.record_label(l1)  # the label first
    await h.service.record_prediction(p1)
    assert await h.service.record_prediction(p2) is False
    await h.service.record_label(l2)
    counts = await h.service.feedback_count("m")
    assert counts == {
        "model_name": "m",
        "complete": 1,
        "total": 1,
    }  # the shadow prediction is not feedback
    doc = h.feedback.docs[p1.prediction_id]
    assert doc["label"] == l1.label and doc["features"] == p1.features
    assert doc["predicted_at"] == p1.occurred_at and doc["version"] == 1


async def test_drift_waits_for_feedback_after_the_drift_and_trains_on_it():
    h = Harness(drift_min_rows=40)
    detected = h.clock.now
    await h.add_feedback(feedback_events("m", 100, detected - timedelta(hours=1)))  # before
    drift = drift_event("m", detected, version=4)
    run = await h.service.on_drift(drift)
    assert run["state"] == "pending"
    await asyncio.sleep(0.05)
    assert (await h.runs.get(run["run_id"]))["state"] == "waiting_for_data"
    assert h.publisher.events == []
    await h.add_feedback(feedback_events("m", 60, detected + timedelta(seconds=1), seed=5))
    await h.service.drain(10)

    done = await h.runs.get(run["run_id"])
    assert done["state"] == "succeeded", done["reason"]
    assert done["dataset"]["rows"] == 60  # only the feedback observed after the drift
    [trained] = h.publisher.of(ModelTrained)
    assert trained.correlation_id == drift.correlation_id
    assert trained.lineage.trigger == "drift"
    assert trained.lineage.parent_version == 4


async def test_drift_retrain_uses_the_newest_max_rows():
    h = Harness(drift_min_rows=20, drift_max_rows=50)
    await h.add_feedback(feedback_events("m", 120, h.clock.now))
    run = await h.service.on_drift(drift_event("m", h.clock.now))
    await h.service.drain(10)
    assert (await h.runs.get(run["run_id"]))["dataset"]["rows"] == 50


async def test_drift_without_enough_feedback_fails_after_the_timeout():
    h = Harness(drift_min_rows=50, drift_wait_timeout_s=0.1)
    await h.add_feedback(feedback_events("m", 10, h.clock.now))
    run = await h.service.on_drift(drift_event("m", h.clock.now))
    await h.service.drain(10)
    done = await h.runs.get(run["run_id"])
    assert done["state"] == "failed"
    assert "10 < 50" in done["reason"]


async def test_drift_in_cooldown_is_recorded_as_skipped():
    clock = Clock()
    h = Harness(clock, drift_min_rows=20, drift_cooldown_s=60)
    await h.add_feedback(feedback_events("m", 40, clock.now))
    first = await h.service.on_drift(drift_event("m", clock.now))
    await h.service.drain(10)
    clock.advance(30)
    second = await h.service.on_drift(drift_event("m", clock.now))
    assert second["state"] == "skipped" and "cooldown: 30.0s left" in second["reason"]
    clock.advance(31)
    await h.add_feedback(feedback_events("m", 40, clock.now))
    third = await h.service.on_drift(drift_event("m", clock.now))
    await h.service.drain(10)
    states = [(await h.runs.get(r["run_id"]))["state"] for r in (first, second, third)]
    assert states == ["succeeded", "skipped", "succeeded"]
    assert len(h.publisher.of(ModelTrained)) == 2


async def test_drift_while_a_run_is_in_flight_is_skipped():
    h = Harness(drift_min_rows=1000, drift_wait_timeout_s=5, drift_cooldown_s=0)
    waiting = await h.service.on_drift(drift_event("m", h.clock.now))
    await asyncio.sleep(0.05)
    h.clock.advance(1)  # another incident (the same one again would be a duplicate)
    skipped = await h.service.on_drift(drift_event("m", h.clock.now))
    assert skipped["state"] == "skipped"
    assert waiting["run_id"] in skipped["reason"]
    await h.service.stop()
    assert h.publisher.events == []


async def test_duplicate_drift_event_is_ignored():
    h = Harness(drift_min_rows=1000, drift_wait_timeout_s=5)
    drift = drift_event("m", h.clock.now)
    assert await h.service.on_drift(drift) is not None
    assert await h.service.on_drift(drift) is None
    await h.service.stop()
    assert len(h.runs.runs) == 1


async def test_a_request_waits_for_the_models_lock_and_a_stale_lock_is_taken_over():
    h = Harness(lock_ttl_s=60, drift_poll_interval_s=0.01)
    uri = await _put(h, "m")
    await h.locks.acquire("m", "someone-else", h.clock.now, 60)
    event = TrainingRequested(model_name="m", dataset_uri=uri)
    await h.service.on_training_requested(event)
    await asyncio.sleep(0.05)
    assert (await h.runs.get(run_id_for(event.event_id)))["state"] == "pending"
    h.clock.advance(61)  # the other holder's lock is now stale
    await h.service.drain(10)
    assert (await h.runs.get(run_id_for(event.event_id)))["state"] == "succeeded"
    assert await h.locks.holder("m") is None


async def test_resume_picks_up_runs_left_unfinished():
    h = Harness()
    uri = await _put(h, "m")
    event = TrainingRequested(model_name="m", dataset_uri=uri)

    run = new_run(event, default_seed=42, now=h.clock.now)
    run["state"] = "running"  # a previous process died mid-run
    await h.runs.create(run)
    assert await h.service.resume() == 1
    await h.service.drain(10)
    assert (await h.runs.get(run["run_id"]))["state"] == "succeeded"
    assert len(h.publisher.of(ModelTrained)) == 1


async def test_stop_leaves_runs_resumable():
    h = Harness(drift_min_rows=1000, drift_wait_timeout_s=5)
    run = await h.service.on_drift(drift_event("m", h.clock.now))
    await asyncio.sleep(0.05)
    await h.service.stop()
    assert (await h.runs.get(run["run_id"]))["state"] == "waiting_for_data"
    assert await h.locks.holder("m") is None
    assert [r["run_id"] for r in await h.runs.active()] == [run["run_id"]]


async def test_put_dataset_stores_the_canonical_csv():
    h = Harness()
    stored = await h.service.put_dataset("m", b"x1,label\n1,1\n2.5,0\n")
    assert stored["rows"] == 2 and stored["feature_names"] == ["x1"]
    assert h.store.objects[stored["uri"]] == b"x1,label\n1.0,1\n2.5,0\n"
    assert stored["uri"] == f"datasets/m/{stored['sha256']}.csv"


async def test_a_long_drift_wait_keeps_its_lock_fresh():
    h = Harness(drift_min_rows=1000, drift_wait_timeout_s=5, lock_ttl_s=0.1)
    run = await h.service.on_drift(drift_event("m", h.clock.now))
    await asyncio.sleep(0.05)
    h.clock.advance(3600)
    await asyncio.sleep(0.1)
    lock = await h.locks.holder("m")
    assert lock["run_id"] == run["run_id"] and lock["acquired_at"] == h.clock.now
    await h.service.stop()


def test_the_service_subscribes_every_event_with_its_group():
    bus = build_app(TrainerSettings(kafka_bootstrap="127.0.0.1:1")).state.bus
    subscriptions = {
        route.event_cls.__name__: f"{group} (batch)" if route.batch else group
        for group, routes in bus._groups.items()
        for route in routes.values()
    }
    assert subscriptions == {
        "PredictionMade": "trainer-feedback (batch)",
        "LabelObserved": "trainer-feedback (batch)",
        "TrainingRequested": "trainer",
        "DriftDetected": "trainer",
        "ModelPolicyChanged": "trainer-policies",
    }


async def test_handlers_feed_the_service():
    h = Harness()
    [(prediction, label)] = feedback_events("m", 1, h.clock.now)
    await handlers.predictions_made(h.service, [prediction])
    await handlers.labels_observed(h.service, [label])
    await handlers.training_requested(h.service, TrainingRequested(model_name="m"))
    await h.service.drain(10)
    assert await h.feedback.count_complete("m") == 1
    [run] = h.runs.runs.values()
    assert run["state"] == "failed"  # one feedback row is not enough to train on
    assert "at least 4" in run["reason"]


async def test_build_app_connects_nothing_until_its_lifespan_runs():
    app = build_app(TrainerSettings(kafka_bootstrap="127.0.0.1:1"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        response = await c.get("/health/ready")
        assert (await c.get("/health/live")).status_code == 200
    assert response.status_code == 503
    assert response.json()["checks"] == {
        "bus": False,
        "dependencies": False,
        "consumers": False,
        "mongo": False,
        "object_store": False,
    }


async def test_an_incidents_later_attempts_take_a_growing_window_from_its_onset():
    """The ladder: attempt n waits for n * drift_min_rows rows since the incident's onset and
    trains on all of them (the newest drift_max_rows); the cooldown applies to a new incident
    only, the monitor paces an incident's attempts."""
    clock = Clock()
    h = Harness(clock, drift_min_rows=30, drift_cooldown_s=600, drift_wait_timeout_s=0.2)
    onset = clock.now
    await h.add_feedback(feedback_events("m", 45, onset + timedelta(seconds=1), seed=2))
    first = drift_event("m", onset)
    await h.service.on_drift(first)
    await h.service.drain(10)
    clock.advance(5)
    second = first.model_copy(
        update={"event_id": uuid.uuid4(), "attempt": 2, "detected_at": clock.now, "onset_at": onset}
    )
    run = await h.service.on_drift(second)
    assert run["state"] == "pending", "an incident's next attempt is not in the cooldown"
    await h.service.drain(10)
    failed = await h.runs.get(run["run_id"])
    assert failed["state"] == "failed" and "45 < 60" in failed["reason"]
    await h.add_feedback(feedback_events("m", 20, clock.now + timedelta(seconds=1), seed=3))
    third = second.model_copy(update={"event_id": uuid.uuid4(), "detected_at": clock.now})
    run = await h.service.on_drift(third)
    await h.service.drain(10)
    done = await h.runs.get(run["run_id"])
    assert done["state"] == "succeeded", done["reason"]
    assert done["dataset"]["rows"] == 65  # every row since the onset, not since this attempt
    window = done["data_window"]
    assert (window["attempt"], window["needed_rows"], window["after_rows"]) == (2, 60, 65)
    assert window["onset_at"] == onset.isoformat()
    # a new incident within the cooldown is still skipped
    other = await h.service.on_drift(drift_event("m", clock.now))
    assert other["state"] == "skipped" and "cooldown" in other["reason"]


async def test_a_run_never_replaces_a_stored_artifact_with_other_bytes():
    """Artifacts are write-once: if the bytes under the artifact's sha256 key were replaced,
    the next run that produces that artifact fails with the reason and announces nothing."""
    h = Harness(train_dedupe_window_s=0)  # the same run twice
    uri = await _put(h, "m")
    first = await _train(h, TrainingRequested(model_name="m", dataset_uri=uri, seed=1))
    assert first["state"] == "succeeded"
    [trained] = h.publisher.of(ModelTrained)
    h.store.objects[trained.artifact.uri] = b"tampered"

    again = await _train(h, TrainingRequested(model_name="m", dataset_uri=uri, seed=1))
    assert again["state"] == "failed"
    assert "ObjectConflict" in again["reason"] and "write-once" in again["reason"]
    assert h.store.objects[trained.artifact.uri] == b"tampered"
    assert len(h.publisher.of(ModelTrained)) == 1


async def test_an_uploaded_dataset_never_replaces_other_bytes_under_its_sha256():
    h = Harness()
    csv = make_dataset(50).to_csv_bytes()
    stored = await h.service.put_dataset("m", csv)
    assert (await h.service.put_dataset("m", csv))["uri"] == stored["uri"]  # same bytes: no-op
    h.store.objects[stored["uri"]] = b"x,label\n1,0\n"
    with pytest.raises(ObjectConflict, match="write-once"):
        await h.service.put_dataset("m", csv)
    assert h.store.objects[stored["uri"]] == b"x,label\n1,0\n"


class Outage:
    """The store resets the first ``n`` writes under ``prefix`` (an S3 outage)."""

    def __init__(self, store, prefix: str, n: int) -> None:
        self.store, self.prefix, self.left = store, prefix, n
        self.put_once = self._put_once
        self._inner = store.put_once

    async def _put_once(self, key: str, data: bytes, content_type: str) -> None:
        if key.startswith(self.prefix) and self.left > 0:
            self.left -= 1
            raise ConnectionResetError("store reset the upload")
        await self._inner(key, data, content_type)


async def test_a_finished_run_waits_out_a_store_outage_and_fails_if_it_outlasts_the_wait(
    monkeypatch,
):
    import modelbus_platform.transient as transient

    monkeypatch.setattr(transient, "backoff_delay", lambda *a: 0.01)
    h = Harness()
    uri = await _put(h, "m")
    outage = Outage(h.store, "artifacts/", 5)
    monkeypatch.setattr(h.store, "put_once", outage.put_once)
    run = await _train(h, TrainingRequested(model_name="m", dataset_uri=uri, seed=1))
    assert run["state"] == "succeeded", run["reason"]
    assert outage.left == 0  # five resets waited out, the artifact written after them
    [trained] = h.publisher.of(ModelTrained)
    assert trained.artifact.uri in h.store.objects

    short = Harness(store_wait_s=0.05)
    uri = await _put(short, "m")
    monkeypatch.setattr(short.store, "put_once", Outage(short.store, "artifacts/", 10**6).put_once)
    run = await _train(short, TrainingRequested(model_name="m", dataset_uri=uri, seed=1))
    assert run["state"] == "failed" and "store reset the upload" in run["reason"]
    assert short.publisher.of(ModelTrained) == []  # nothing announced without its artifact
